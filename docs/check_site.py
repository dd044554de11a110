"""Check the built site in a real browser: every gallery page shows its figures, no internal link or image
is broken, and a screenshot of each page is saved.

Usage (after ``make docs``; ``make docs-check`` runs it)::

    python docs/check_site.py [docs/_build/html] [--screenshots DIR] [--chromium PATH]

Three checks, each listing every failure it finds:

1. Links and images in the HTML files: every ``href`` and ``src`` that is not external (``http:``,
   ``mailto:`` ...) must name a file of the build, and a ``#fragment`` must name an ``id`` in it. Every
   PNG must be a PNG with a positive size.
2. In headless Chromium (Debian's ``chromium``): a harness page opens each page in a frame
   (``--allow-file-access-from-files`` lets it read a ``file://`` frame) and records, for every ``<img>``,
   whether the browser loaded and decoded it (``complete`` and ``naturalWidth > 0``). Every image of every
   page must load, and every gallery page of an experiment that saves figures (its code calls
   ``savefig``) and was run during the build must show at least one.
3. A screenshot of each gallery page, the home page, the mathematics and the API index, 1280 pixels wide,
   into ``--screenshots`` (default ``docs/_build/screenshots``): look at them.

Exit status 0 when every check passes, 1 otherwise (2 when no browser is found).
"""
import argparse
import html.parser
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--allow-file-access-from-files"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser(explicit=None):
    """Path of a Chromium executable, or None."""
    for name in ([explicit] if explicit else []) + list(BROWSERS):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


class Refs(html.parser.HTMLParser):
    """Collects ids, link targets (a, link) and image sources (img, script) of one HTML file."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag in ("a", "link") and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag in ("img", "script", "source") and attrs.get("src"):
            self.images.append(attrs["src"])


def parse(path):
    refs = Refs()
    refs.feed(path.read_text(encoding="utf-8", errors="replace"))
    return refs


def png_size(path):
    """(width, height) of a PNG file, or None when it is not one."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def is_internal(url):
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith(("//", "data:", "javascript:"))


def check_files(root):
    """Check 1 for every HTML file under ``root``; returns a list of problems."""
    problems, cache = [], {}
    pages = sorted(root.rglob("*.html"))
    for page in pages:
        refs = cache.setdefault(page, parse(page))
        for kind, urls in (("link", refs.links), ("image", refs.images)):
            for url in urls:
                if not is_internal(url):
                    continue
                parts = urlsplit(url)
                target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
                rel = page.relative_to(root)
                if not target.exists():
                    problems.append(f"{rel}: broken {kind} {url}")
                    continue
                if target.is_dir():
                    target = target / "index.html"
                if parts.fragment and target.suffix == ".html" and target.exists():
                    ids = cache.setdefault(target, parse(target)).ids
                    if unquote(parts.fragment) not in ids:
                        problems.append(f"{rel}: link {url} names no id {parts.fragment!r} in its target")
    for png in sorted(root.rglob("*.png")):
        size = png_size(png)
        if not size or min(size) <= 0:
            problems.append(f"{png.relative_to(root)}: not a readable PNG")
    return problems, pages


HARNESS = """<!doctype html><meta charset="utf-8"><title>check</title>
<pre id="result">pending</pre><iframe id="frame" style="width:1280px;height:900px"></iframe>
<script>
const pages = %s;
const result = {};
const frame = document.getElementById("frame");
function settle(doc) {
  const imgs = Array.from(doc.images);
  return Promise.all(imgs.map(img => img.complete ? null :
      new Promise(ok => { img.onload = ok; img.onerror = ok; setTimeout(ok, 5000); })))
    .then(() => imgs.map(img => ({src: img.getAttribute("src"), cls: img.className,
                                  ok: img.complete && img.naturalWidth > 0, w: img.naturalWidth})));
}
async function run() {
  for (const page of pages) {
    await new Promise(ok => { frame.onload = ok; frame.src = page; });
    try {
      const doc = frame.contentDocument;
      doc.querySelectorAll("img[loading=lazy]").forEach(img => img.loading = "eager");
      result[page] = {title: doc.title, images: await settle(doc),
                      text: doc.body.innerText.includes("savefig("),
                      notrun: doc.body.innerText.includes("Not run when these pages were built")};
    } catch (err) { result[page] = {error: String(err)}; }
  }
  document.getElementById("result").textContent = JSON.stringify(result);
}
run();
</script>
"""


def browser_images(browser, root, pages):
    """Check 2: {page: record} from the harness page's DOM after Chromium ran it."""
    harness = root / "_check_site_harness.html"
    harness.write_text(HARNESS % json.dumps([p.relative_to(root).as_posix() for p in pages]), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=120000",
                                  "--dump-dom", harness.as_uri()], capture_output=True, text=True, timeout=300)
    finally:
        harness.unlink()
    dom = out.stdout
    start, end = dom.find('<pre id="result">'), dom.find("</pre>")
    body = html.unescape(dom[start + len('<pre id="result">'):end]) if start >= 0 else ""
    if not body.startswith("{"):
        raise RuntimeError(f"the browser did not run the harness (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(body)


def screenshot(browser, page, target, height=2600):
    """Check 3: a screenshot of ``page`` 1280 pixels wide."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{height}",
                        "--virtual-time-budget=5000", f"--screenshot={target}", page.as_uri()],
                       capture_output=True, timeout=120)
    return target.is_file() and png_size(target) is not None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for the screenshots")
    parser.add_argument("--chromium", default=None, help="browser executable (default: chromium on PATH)")
    parser.add_argument("--no-screenshots", action="store_true", help="skip check 3")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "index.html").is_file():
        print(f"no built site at {root} (run make docs first)", file=sys.stderr)
        return 1
    browser = find_browser(args.chromium)
    if browser is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    problems, pages = check_files(root)
    print(f"1. {len(pages)} HTML pages: {len(problems)} broken internal links or images")

    gallery = sorted(p for p in (root / "gallery").glob("*.html") if p.name not in ("index.html", "sg_execution_times.html"))
    main_pages = [root / "index.html", root / "MATH.html", root / "api" / "index.html", root / "gallery" / "index.html"]
    checked = [p for p in main_pages if p.exists()] + gallery + sorted((root / "api").glob("numpy_moe*.html"))
    records = browser_images(browser, root, checked)
    n_images = 0
    for page in checked:
        rel = page.relative_to(root).as_posix()
        record = records.get(rel, {"error": "not visited"})
        if "error" in record:
            problems.append(f"{rel}: the browser could not read it ({record['error']})")
            continue
        n_images += len(record["images"])
        problems += [f"{rel}: image {img['src']} did not load in the browser" for img in record["images"]
                     if not img["ok"]]
        figures = [img for img in record["images"] if "sphx-glr-single-img" in img["cls"] and img["ok"]]
        if page in gallery and record["text"] and not record["notrun"] and not figures:
            problems.append(f"{rel}: the experiment saves figures but its page shows none")
        if page in gallery:
            print(f"   {rel:<40} {len(figures)} figure(s) shown" + (" (not run)" if record["notrun"] else ""))
    print(f"2. {len(checked)} pages opened in {Path(browser).name}: {n_images} images checked")

    if not args.no_screenshots:
        shots = args.screenshots or root.parent / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        for page in [p for p in main_pages if p.exists()] + gallery:
            target = shots / (page.relative_to(root).as_posix().replace("/", "_").replace(".html", ".png"))
            if not screenshot(browser, page, target, height=5000 if page in gallery else 2600):
                problems.append(f"{page.relative_to(root)}: no screenshot")
        print(f"3. screenshots in {shots}")

    for problem in problems:
        print("FAIL", problem)
    print("site check: " + ("passed" if not problems else f"{len(problems)} problems"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
