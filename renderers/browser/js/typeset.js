// Typesets the TeX a MathJax or KaTeX page keeps in its DOM (`tex_in_dom.js` said it does), as the page's own script
// would have: MathJax 3.2.2 (`mathjax-tex-svg-full.js`, Apache-2.0, bundled beside this file) with every TeX extension
// built in and its glyphs drawn as SVG paths, so nothing is fetched. Each typeset formula's container gets the
// attribute `opts.attr` (named afresh for every page, so the document cannot plant one) holding its TeX source:
// `layout.js` writes that TeX. MathJax 2's `<script type="math/tex">` formulas become TeX text first and their
// previews go, and pandoc's KaTeX spans get delimiters. A TeX error shows the formula's source as it is (the
// `noerrors` extension) and is counted.
// opts: {attr, tex: the page's own settings (`tex_in_dom.js`)}; returns the counts {math_typeset, math_tex_errors,
// math_undefined_macros} or {error} if MathJax itself failed.
async (opts) => {
  const t = opts.tex;
  const inlinePair = (t.inlineMath || [["\\(", "\\)"]])[0], displayPair = (t.displayMath || [["\\[", "\\]"]])[0];
  const delimited = (tex, display) => {
    const [open, close] = display ? displayPair : inlinePair;
    return open + tex + close;
  };
  for (const s of Array.from(document.querySelectorAll('script[type^="math/tex"]'))) {
    const before = s.previousElementSibling;
    if (before && before.classList.contains("MathJax_Preview")) before.remove();
    s.replaceWith(document.createTextNode(delimited(s.textContent, /mode\s*=\s*display/.test(s.type))));
  }
  // pandoc's KaTeX pages (`--katex`) keep each formula's bare TeX in a span.math that their script renders
  for (const el of Array.from(document.querySelectorAll("span.math.inline, span.math.display"))) {
    const tex = el.textContent;
    if (el.children.length || !tex.trim() || [inlinePair, displayPair].some(([open]) => tex.trim().startsWith(open))) continue;
    el.textContent = delimited(tex, el.classList.contains("display"));
  }
  window.MathJax = {
    tex: { inlineMath: t.inlineMath || [inlinePair], displayMath: t.displayMath || [["$$", "$$"], displayPair],
           processEscapes: t.processEscapes !== false, macros: t.macros || {}, tags: t.tags || "none",
           packages: { "[+]": ["noerrors"] } },
    svg: { fontCache: "local" },
    options: { enableMenu: false },
    startup: { typeset: false },
  };
  try {
    /* MATHJAX */
    await window.MathJax.startup.promise;
    await window.MathJax.typesetPromise();
  } catch (e) {
    return { error: String(e && e.message || e).slice(0, 200) };
  }
  const counts = { math_typeset: 0, math_tex_errors: 0, math_undefined_macros: 0 };
  for (const item of window.MathJax.startup.document.math) {
    const root = item.typesetRoot;  // an escaped \$ is an item too, typeset as a text node
    if (!root || root.localName !== "mjx-container" || !root.isConnected) continue;
    root.setAttribute(opts.attr, item.math);
    counts.math_typeset++;
    if (root.querySelector('[data-mml-node="merror"]')) counts.math_tex_errors++;
    else if (root.querySelector('[data-mml-node="mtext"][fill="red"]')) counts.math_undefined_macros++;  // `noundefined`
  }
  return counts;
}
