// Formulas typeset by KaTeX or MathJax 3 (CHTML) and saved with the page, whose stylesheet did not load (it sits on a
// CDN no render can reach, or the page was saved without it). Without katex.css a KaTeX formula shows twice: its
// MathML, which the stylesheet hides, and KaTeX's HTML glyphs laid out wrong. Without MathJax's CSS a CHTML formula
// draws no glyph at all (they are CSS content) while its assistive MathML and copy-text show. The page's text holds
// each formula once, so each such formula keeps only its MathML, which Chromium draws itself. Returns how many
// formulas it changed.
() => {
  let n = 0;
  const only = (keep, container) => {
    for (const child of Array.from(container.children)) {
      if (child !== keep) child.style.setProperty("display", "none", "important");
    }
    n++;
  };
  for (const el of document.querySelectorAll(".katex")) {
    const mathml = el.querySelector(".katex-mathml");
    if (mathml && mathml.querySelector("math") && el.querySelector(".katex-html")
        && getComputedStyle(mathml).position !== "absolute") only(mathml, el);
  }
  for (const el of document.querySelectorAll('mjx-container[jax="CHTML"]')) {
    const mathml = el.querySelector(":scope > mjx-assistive-mml"), drawn = el.querySelector(":scope > mjx-math");
    if (mathml && mathml.querySelector("math") && drawn && drawn.getBoundingClientRect().width < 1
        && getComputedStyle(mathml).position !== "absolute") only(mathml, el);
  }
  return n;
}
