// KaTeX output whose stylesheet did not load (it sits on a CDN no render can reach): without katex.css a formula
// shows twice, once as its MathML (which the stylesheet hides) and once as KaTeX's HTML glyphs laid out wrong, while
// the page's text holds it once. Each such formula keeps only its MathML, which Chromium draws itself. Returns how
// many formulas it changed.
() => {
  let n = 0;
  for (const el of document.querySelectorAll(".katex")) {
    const mathml = el.querySelector(".katex-mathml"), html = el.querySelector(".katex-html");
    if (!mathml || !html || !mathml.querySelector("math") || getComputedStyle(mathml).position === "absolute") continue;
    html.style.setProperty("display", "none", "important");
    n++;
  }
  return n;
}
