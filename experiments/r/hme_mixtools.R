# The outside oracle for numpy_moe's EM: mixtools::hmeEM on its own NOdata example.
#
#   Rscript experiments/r/hme_mixtools.R OUT.json
#
# Follows the example of ?hmeEM (set.seed(100); regmixEM(Equivalence, NO) for starting values; then
# hmeEM(Equivalence, NO, beta = ...)) and also passes regmixEM's sigma, which the example leaves to a
# random draw inside hmeEM, so the run is deterministic and numpy_moe can start from the same point.
# Writes the data, the starting values and hmeEM's results as JSON (tests/fixtures/hme_mixtools.json is
# this script's output, committed so the comparison runs without R). Needs R >= 4 and mixtools 2.0
# (Debian: apt-get install r-base-core r-cran-mixtools). The JSON is written by hand, so the script needs
# no package beyond mixtools.
suppressPackageStartupMessages(library(mixtools))

out <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(out)) stop("usage: Rscript hme_mixtools.R OUT.json")

data(NOdata)
y <- NOdata$Equivalence
x <- NOdata$NO
set.seed(100)
invisible(capture.output(em.out <- regmixEM(y, x)))
invisible(capture.output(hme.out <- hmeEM(y, x, beta = em.out$beta, sigma = em.out$sigma)))

num <- function(v) paste0("[", paste(sprintf("%.17g", as.vector(v)), collapse = ", "), "]")
rows <- function(m) paste0("[", paste(apply(m, 1, num), collapse = ", "), "]")
fields <- c(
  sprintf('"mixtools_version": "%s"', as.character(packageVersion("mixtools"))),
  sprintf('"R_version": "%s"', paste(R.version$major, R.version$minor, sep = ".")),
  sprintf('"x": %s', num(x)),
  sprintf('"y": %s', num(y)),
  sprintf('"start_beta": %s', rows(t(em.out$beta))),   # (k, 2): intercept, slope per expert
  sprintf('"start_sigma": %s', num(em.out$sigma)),
  sprintf('"beta": %s', rows(t(hme.out$beta))),        # (k, 2)
  sprintf('"sigma": %s', num(hme.out$sigma)),
  sprintf('"w": %s', num(hme.out$w)),                  # gate: P(expert 1 | x) = inv.logit(w[1] + w[2] x)
  sprintf('"loglik": %.17g', hme.out$loglik),
  sprintf('"all_loglik": %s', num(hme.out$all.loglik)),
  sprintf('"posterior": %s', rows(hme.out$posterior)), # (n, k)
  sprintf('"restarts": %d', hme.out$restarts)
)
writeLines(paste0("{\n  ", paste(fields, collapse = ",\n  "), "\n}"), out)
