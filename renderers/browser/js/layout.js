// Collects what a reader sees on a laid-out page, in DOM (reading) order: one item per visual-line fragment of a
// text node, one per visible image and one per formula. Text hidden by CSS (display:none, visibility, opacity 0,
// transparent colour, clip, zero size, outside an overflow-clipping ancestor, outside the page area) is left out, word
// by word where a line is only partly clipped: a word counts only when no part of it is cut off at the sides, and
// with `strip` (the page width of the template layout, whose pages are strips of that width side by side) only when it
// lies within one strip. Coordinates are document coordinates (the page is measured at scroll 0,0).
// A formula (MathML, KaTeX, MathJax 2 and 3 output) is one item holding its LaTeX between the arXiv route's
// delimiters, \( \) inline and \[ \] display: the TeX the document carries (an x-tex annotation, MathJax 2's
// script, the page's TeX that `typeset.js` typeset, kept in the attribute `texAttr`), else its presentation MathML
// converted by `toLatex` (mathml-to-latex, bundled beside this file).
// opts: {area: {l, t, r, b}, minImage, strip, texAttr}
(opts, toLatex) => {
  const INF = 1e12;
  const area = opts.area;
  const strip = opts.strip || 0;
  const items = [];
  const counts = { math_tex: 0, math_converted: 0, math_unconverted: 0, math_cut: 0, words_cut: 0 };
  const boxes = new Map();
  const ids = new Map();
  const styles = new Map();
  const range = document.createRange();
  const id = (el) => {
    if (!el) return 0;
    let v = ids.get(el);
    if (v === undefined) { v = ids.size + 1; ids.set(el, v); }
    return v;
  };
  const style = (el) => {
    let s = styles.get(el);
    if (s === undefined) { s = getComputedStyle(el); styles.set(el, s); }
    return s;
  };
  const transparent = (c) => c === "transparent" || /rgba\([^)]*,\s*0\)$/.test(c);
  // The box an element's content may be seen in (document coordinates), or null if it hides its content.
  const box = (el) => {
    if (boxes.has(el)) return boxes.get(el);
    const s = style(el);
    const parent = el.parentElement;
    let b = parent ? box(parent) : area;
    if (b !== null && s.position === "fixed") b = area;
    if (b === null || s.display === "none" || parseFloat(s.opacity) === 0 || s.contentVisibility === "hidden"
        || (s.clip !== "auto" && s.clip !== "" && (s.position === "absolute" || s.position === "fixed"))
        || /inset\(\s*50%/.test(s.clipPath)) {
      b = null;
    } else if (el !== document.documentElement && el !== document.body
               && (s.overflowX !== "visible" || s.overflowY !== "visible")) {
      const r = el.getBoundingClientRect();
      b = { l: Math.max(b.l, r.left), t: Math.max(b.t, r.top), r: Math.min(b.r, r.right), b: Math.min(b.b, r.bottom) };
      if (b.l >= b.r || b.t >= b.b) b = null;
    }
    boxes.set(el, b);
    return b;
  };
  const inside = (r, b) => {
    const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
    return r.width >= 1 && r.height >= 1 && cx >= b.l && cx <= b.r && cy >= b.t && cy <= b.b;
  };
  const oneStrip = (r) => !strip || Math.floor((r.left + 0.5) / strip) === Math.floor((r.right - 0.5) / strip);
  const fullyInside = (r, b) => r.width >= 1 && r.height >= 1 && r.left >= b.l - 0.5 && r.right <= b.r + 0.5
    && r.top >= b.t - 0.5 && r.bottom <= b.b + 0.5 && oneStrip(r);
  // A word or formula counts as shown when no part of it is cut off at the sides (nor split between two page strips)
  // and its middle is inside: glyph boxes stand a pixel or two above and below a tight line box.
  const shown = (r, b) => inside(r, b) && r.left >= b.l - 0.5 && r.right <= b.r + 0.5 && oneStrip(r);
  const nonEmpty = (rects) => Array.from(rects).filter((r) => r.width >= 1 && r.height >= 1);
  const rectsOf = (node, a, e) => { range.setStart(node, a); range.setEnd(node, e); return nonEmpty(range.getClientRects()); };
  const union = (rs) => {
    let l = INF, t = INF, r = -INF, b = -INF;
    for (const x of rs) { l = Math.min(l, x.left); t = Math.min(t, x.top); r = Math.max(r, x.right); b = Math.max(b, x.bottom); }
    return { left: l, top: t, right: r, bottom: b, width: r - l, height: b - t };
  };
  const sameLine = (a, b) => Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) >= 0.5 * Math.min(a.height, b.height);
  const HEADING = /^h([1-6])$/i;
  const prefixed = new Set();
  // Markdown prefix for the first visible fragment of a heading or list item.
  const prefix = (el) => {
    const h = el.closest("h1,h2,h3,h4,h5,h6");
    if (h && !prefixed.has(h)) { prefixed.add(h); return "#".repeat(+HEADING.exec(h.localName)[1]) + " "; }
    const li = el.closest("li");
    if (li && !prefixed.has(li)) {
      prefixed.add(li);
      const list = li.parentElement;
      const type = style(li).listStyleType;
      if (type === "none" || style(li).display !== "list-item") return "";
      if (list && list.localName === "ol") {
        let n = list.hasAttribute("start") ? parseInt(list.getAttribute("start"), 10) || 1 : 1;
        for (let sib = li.previousElementSibling; sib; sib = sib.previousElementSibling) if (sib.localName === "li") n++;
        if (li.hasAttribute("value")) n = parseInt(li.getAttribute("value"), 10) || n;
        return marker(n, type) + ". ";
      }
      return "- ";
    }
    return "";
  };
  // The number of an ordered list item as its list-style-type draws it (type="i" is lower-roman, "A" upper-alpha).
  const ROMAN = [[1000, "m"], [900, "cm"], [500, "d"], [400, "cd"], [100, "c"], [90, "xc"], [50, "l"], [40, "xl"],
                 [10, "x"], [9, "ix"], [5, "v"], [4, "iv"], [1, "i"]];
  const roman = (n) => { let s = ""; for (const [v, r] of ROMAN) while (n >= v) { s += r; n -= v; } return s; };
  const alpha = (n) => { let s = ""; for (; n > 0; n = Math.floor((n - 1) / 26)) s = String.fromCharCode(97 + (n - 1) % 26) + s; return s; };
  const marker = (n, type) => {
    if (n > 0 && n < 4000 && /roman$/.test(type)) return type.startsWith("upper") ? roman(n).toUpperCase() : roman(n);
    if (n > 0 && /(alpha|latin)$/.test(type)) return type.startsWith("upper") ? alpha(n).toUpperCase() : alpha(n);
    return String(n);
  };
  const block = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const d = style(e).display;
      if (d !== "inline" && d !== "contents") return e;
    }
    return null;
  };
  const transform = (text, s) => {
    if (s.textTransform === "uppercase") return text.toUpperCase();
    if (s.textTransform === "lowercase") return text.toLowerCase();
    if (s.textTransform === "capitalize") return text.replace(/(^|\s)(\S)/g, (m, a, c) => a + c.toUpperCase());
    return text;
  };
  const TOKEN = /[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]|[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+/g;
  const emit = (el, text, r) => {
    const s = style(el);
    const cell = el.closest("td,th");
    items.push({
      t: transform(text, s), x: r.left, y: r.top, w: r.width, h: r.height,
      blk: id(block(el)), cell: id(cell), pre: /^pre|^break-spaces/.test(s.whiteSpace), pfx: prefix(el),
    });
  };
  const textNode = (node) => {
    const el = node.parentElement;
    const b = box(el);
    if (b === null) return;
    const s = style(el);
    if (s.visibility !== "visible" || transparent(s.color) || parseFloat(s.fontSize) < 1) return;
    const all = rectsOf(node, 0, node.data.length);
    if (!all.length) return;
    if (!node.data.trim()) {  // rendered whitespace between inline elements separates their words
      if (all.length === 1 && inside(all[0], b)) emit(el, node.data, all[0]);
      return;
    }
    if (all.length === 1 && fullyInside(all[0], b)) { emit(el, node.data, all[0]); return; }
    // Word by word (character by character for CJK and for a word broken across lines): group into lines.
    const toks = [];
    for (const m of node.data.matchAll(TOKEN)) {
      const rs = rectsOf(node, m.index, m.index + m[0].length);
      if (!rs.length) continue;
      if (rs.length === 1 || rs.every((r) => sameLine(r, rs[0]))) { toks.push({ s: m.index, e: m.index + m[0].length, r: union(rs) }); continue; }
      for (let i = m.index; i < m.index + m[0].length; i++) {
        const cr = rectsOf(node, i, i + 1);
        if (cr.length) toks.push({ s: i, e: i + 1, r: union(cr) });
      }
    }
    toks.forEach((t, i) => { t.i = i; });
    let line = [];
    const flush = () => {
      const kept = line.filter((t) => shown(t.r, b));
      counts.words_cut += line.filter((t) => inside(t.r, b) && !shown(t.r, b)).length;  // partly shown
      if (kept.length) {
        // The text between kept tokens is the node's own (whitespace or nothing); a dropped token becomes a space.
        // The node's leading/trailing whitespace stays, so an inline element that follows keeps its separation.
        let text = kept[0] === toks[0] ? node.data.slice(0, kept[0].s) : "";
        for (let i = 0; i < kept.length; i++) {
          const k = kept[i], at = k.i;
          text += node.data.slice(k.s, k.e);
          if (i + 1 < kept.length) text += toks[at + 1] === kept[i + 1] ? node.data.slice(k.e, kept[i + 1].s) : " ";
          else if (at === toks.length - 1) text += node.data.slice(k.e);
        }
        emit(el, text, union(kept.map((t) => t.r)));
      }
      line = [];
    };
    for (const t of toks) {
      if (line.length && !sameLine(line[line.length - 1].r, t.r)) flush();
      line.push(t);
    }
    flush();
  };
  const image = (el) => {
    const b = box(el);
    if (b === null || style(el).visibility !== "visible") return;
    const r = el.getBoundingClientRect();
    if (r.width < opts.minImage || r.height < opts.minImage || !inside(r, b)) return;
    let alt = el.getAttribute("alt") || el.getAttribute("aria-label") || el.getAttribute("title") || "";
    if (!alt && el.localName === "svg") { const t = el.querySelector("title"); alt = t ? t.textContent : ""; }
    alt = alt.replace(/\s+/g, " ").trim();
    if (/^\S*\.(png|jpe?g|gif|svg|webp|bmp|tiff?)$/i.test(alt) || /^\S*\/\S*$/.test(alt)) alt = "";  // a file name, not a description
    items.push({ t: "![" + alt + "]()", x: r.left, y: r.top, w: r.width, h: r.height,
                 blk: id(el), cell: 0, pre: false, pfx: "", image: true });
  };
  const TEX = 'annotation[encoding="application/x-tex"], annotation[encoding="TeX"], annotation[encoding="text/x-tex"]';
  // The LaTeX of a <math> element: its TeX annotation, else its presentation MathML converted; null if neither.
  const mathmlTex = (m) => {
    const a = m.querySelector(TEX);
    if (a && a.textContent.trim()) { counts.math_tex++; return a.textContent; }
    let tex = "";
    try { tex = toLatex(new XMLSerializer().serializeToString(m)); } catch (e) { tex = ""; }
    if (tex.trim()) { counts.math_converted++; return tex; }
    return null;
  };
  const MATHJAX2 = /^MathJax(_SVG|_CHTML|_HTML)?$/;
  // If `el` is the outermost element of a rendered formula: {tex, display, blk} (tex null when none could be had).
  const formula = (el) => {
    const tag = el.localName, cls = el.classList;
    if (tag === "math") {
      return { tex: mathmlTex(el), display: el.getAttribute("display") === "block" || style(el).display === "block" };
    }
    if (cls && cls.contains("katex")) {
      const a = el.querySelector(TEX), m = el.querySelector("math");
      if (a && a.textContent.trim()) counts.math_tex++;
      return { tex: a && a.textContent.trim() ? a.textContent : m ? mathmlTex(m) : null, display: !!el.closest(".katex-display") };
    }
    if (tag === "mjx-container") {
      const tex = el.getAttribute(opts.texAttr);  // typeset here from the page's TeX (`typeset.js`)
      if (tex !== null) { counts.math_tex++; return { tex, display: el.getAttribute("display") === "true" }; }
      const m = el.querySelector("math");
      return { tex: m ? mathmlTex(m) : null, display: el.getAttribute("display") === "true" };
    }
    if (cls && Array.from(cls).some((c) => MATHJAX2.test(c))) {
      const holder = el.parentElement && /_Display$/.test(el.parentElement.className) ? el.parentElement : el;
      const script = holder.nextElementSibling;
      if (script && script.localName === "script" && /^math\/tex/.test(script.type)) {
        counts.math_tex++;
        return { tex: script.textContent, display: /mode=display/.test(script.type) };
      }
      const m = el.querySelector("math");
      return { tex: m ? mathmlTex(m) : null, display: holder !== el };
    }
    return null;
  };
  // One item for a visible formula, on the line of its first fragment; a formula without TeX is read as text.
  const math = (el, f) => {
    const b = box(el);
    if (b === null || style(el).visibility !== "visible") return true;
    if (f.tex === null) { counts.math_unconverted++; return false; }
    const rs = nonEmpty(el.getClientRects());
    if (!rs.length) return true;
    const r = union(rs.filter((x) => sameLine(x, rs[0])));
    if (!shown(r, b)) {
      if (inside(r, b)) counts.math_cut++;  // partly shown: neither its LaTeX nor part of it would be what the page shows
      return true;
    }
    // TeX comments go first (LaTeXML wraps long annotations with `%` + newline): on one line they would hide the rest
    const tex = f.tex.replace(/(?<!\\)%[^\n]*(\n|$)/g, "").replace(/\s+/g, " ").trim();
    const inner = el.parentElement || el;
    items.push({ t: f.display ? "\\[" + tex + "\\]" : "\\(" + tex + "\\)", x: r.left, y: r.top, w: r.width, h: r.height,
                 blk: id(f.display ? el : block(inner)), cell: id(el.closest("td,th")), pre: false, pfx: prefix(inner) });
    return true;
  };
  const IMAGES = new Set(["img", "svg", "video", "canvas", "object", "embed", "iframe"]);
  const SKIP = new Set(["script", "style", "template", "head", "title", "noembed"]);
  // Pre-order walk by hand: a TreeWalker filter callback cannot run while the page's JavaScript is off.
  const root = document.body || document.documentElement;
  for (let n = root; n;) {
    let descend = false;
    if (n.nodeType === Node.TEXT_NODE) textNode(n);
    else if (n.nodeType === Node.ELEMENT_NODE) {
      const tag = n.localName;
      let f;
      if (IMAGES.has(tag)) image(n);  // an image's own content (SVG text, fallback) is part of the image
      else if ((f = formula(n)) !== null) descend = !math(n, f);
      else descend = !SKIP.has(tag);
    }
    if (descend && n.firstChild) { n = n.firstChild; continue; }
    while (n && n !== root && !n.nextSibling) n = n.parentNode;
    n = n && n !== root ? n.nextSibling : null;
  }
  const bg = (el) => el && !transparent(style(el).backgroundColor) ? style(el).backgroundColor : null;
  return {
    items,
    counts,
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    background: bg(document.body) || bg(document.documentElement) || "rgb(255, 255, 255)",
  };
};
