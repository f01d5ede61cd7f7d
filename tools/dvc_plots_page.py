"""Build ``.dvc/plots/offline.html``, the page ``dvc plots show`` / ``dvc plots diff`` fill (``plots.html_template``
in ``.dvc/config``), with the Vega, Vega-Lite and vega-embed JavaScript inlined, so the plots open with no network.

DVC's own page loads the three libraries from cdn.jsdelivr.net through its ``{scripts}`` placeholder; this page has
no such placeholder (DVC then adds nothing) and carries the libraries that vl-convert-python bundles
(``vl_convert.javascript_bundle``: no imports left, ~0.9 MB). Its plot divs call ``vegaEmbed(id, spec)`` as DVC
writes them; the page makes those calls render SVG, keep only vega-embed's offline actions (save as SVG/PNG, view
the source) and print a failed chart's error in its place.

    python -m tools.dvc_plots_page            # rewrite .dvc/plots/offline.html
    python -m tools.dvc_plots_page --check    # exit 1 if the committed page differs from what this builds

tests/test_dvc_plots.py checks the committed page equals ``build()`` (so a vl-convert-python upgrade shows up as a
failing test until the page is rebuilt) and renders ``dvc plots diff`` in chromium with every request blocked.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

import vl_convert

from ghostreview.util.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / ".dvc" / "plots" / "offline.html"
# DVC's chart templates (and ours in .dvc/plots/*.json) declare the Vega-Lite v5 schema: bundle the newest v5
VEGA_LITE = "5.21"

HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>GhostReview: DVC plots</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; }
  body > div { margin: 0 0 2rem; }
  .plot-error { color: #b00020; white-space: pre-wrap; font-family: monospace; }
</style>
"""

EMBED = """<script>
/* DVC writes one `vegaEmbed('#id', spec)` call per chart: render SVG, keep the offline actions (save as SVG/PNG,
   view the source; not "Open in Vega Editor", which is a web site) and show a failed chart's error in its place.
   window.ghostreviewPlots collects every call's promise (its result: {view, spec}). */
(function () {
  const embed = window.vegaEmbed;
  window.ghostreviewPlots = [];
  window.vegaEmbed = function (el, spec, options) {
    const opts = Object.assign({renderer: "svg", actions: {export: true, source: true, compiled: false,
                                                           editor: false}}, options || {});
    const done = embed(el, spec, opts).catch(function (err) {
      const target = document.querySelector(el);
      const box = document.createElement("pre");
      box.className = "plot-error";
      box.textContent = "This chart failed to render: " + err;
      target.appendChild(box);
      throw err;
    });
    window.ghostreviewPlots.push(done);
    return done;
  };
})();
</script>
"""

TAIL = """</head>
<body>
{plot_divs}
</body>
</html>
"""


def bundle() -> str:
    """vega-embed, Vega-Lite and Vega as one classic script defining ``window.vegaEmbed``, ``vega``, ``vegaLite``,
    wrapped in a function so that its top-level names stay out of the page's global scope (DVC's divs declare
    ``var spec``)."""
    js = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    for text in ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if text.lower() in js.lower():  # would end the <script> early, or be filled in by DVC
            raise SystemExit(f"error: vl_convert.javascript_bundle() contains {text!r}: it cannot be inlined as is")
    return js


def build() -> str:
    """The whole page, as ``.dvc/plots/offline.html`` must hold it."""
    versions = (f"vega {vl_convert.get_vega_version()}, vega-lite {VEGA_LITE}, vega-embed "
                f"{vl_convert.get_vega_embed_version()}; vl-convert-python {version('vl-convert-python')}")
    return (HEAD + f"<script>\n/* {versions} (python -m tools.dvc_plots_page) */\n(function () {{\n" + bundle()
            + "\n})();\n</script>\n" + EMBED + TAIL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare the committed page with what would be built")
    ap.add_argument("--out", type=Path, default=PAGE, help=f"default: {PAGE.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    page = build()
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != page:
            print(f"error: {args.out} is not what this vl-convert-python builds: run python -m tools.dvc_plots_page",
                  file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, page)
    print(f"wrote {args.out} ({len(page.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
