// Does this page keep TeX in its DOM for MathJax or KaTeX to typeset, and with what settings? A page whose own script
// would typeset it loads MathJax or KaTeX (a script that names either) or holds MathJax 2's `<script type="math/tex">`
// formulas; with the page's JavaScript off (or its script on a CDN no render can reach) that TeX would show raw.
// Returns null for any other page (its `\(` is text the reader sees), else the TeX settings of the page's own
// configuration that change what is typeset or how: delimiters, `processEscapes`, macros, equation tags. The
// configuration (MathJax 3's `MathJax = {...}`, MathJax 2's `MathJax.Hub.Config({...})`, KaTeX auto-render's options)
// is read as data, never run: strings, numbers, booleans, arrays and objects; any other value is left out.
() => {
  const scripts = Array.from(document.querySelectorAll("script"));
  const names = (s) => /mathjax|katex/i.test(s.getAttribute("src") || "") || /MathJax|renderMathInElement|katex/.test(s.textContent);
  if (!scripts.some(names) && !document.querySelector('script[type^="math/tex"]')) return null;

  const SKIPPED = {};
  // The object literal at src[at] as data, or SKIPPED where it holds something else (no value is ever evaluated).
  const literal = (src, at) => {
    let i = at, steps = 0;
    const ws = () => {
      for (;;) {
        while (i < src.length && /\s/.test(src[i])) i++;
        if (src.startsWith("//", i)) { const e = src.indexOf("\n", i); i = e < 0 ? src.length : e; }
        else if (src.startsWith("/*", i)) { const e = src.indexOf("*/", i + 2); i = e < 0 ? src.length : e + 2; }
        else return;
      }
    };
    const str = () => {
      const q = src[i++];
      let s = "";
      while (i < src.length && src[i] !== q) {
        if (src[i] !== "\\") { s += src[i++]; continue; }
        const c = src[i + 1];
        if (c === "u" && /^[0-9a-fA-F]{4}$/.test(src.slice(i + 2, i + 6))) { s += String.fromCharCode(parseInt(src.slice(i + 2, i + 6), 16)); i += 6; continue; }
        s += c === "n" ? "\n" : c === "t" ? "\t" : c === undefined ? "" : c;
        i += 2;
      }
      i++;
      return s;
    };
    const skip = () => {  // past a value we do not read: to the next , } or ] at its own depth
      let depth = 0;
      while (i < src.length) {
        const c = src[i];
        if (c === '"' || c === "'" || c === "`") { str(); continue; }
        if ("([{".includes(c)) depth++;
        else if (")]}".includes(c)) { if (depth === 0) return; depth--; }
        else if (c === "," && depth === 0) return;
        i++;
      }
    };
    const value = () => {
      if (++steps > 20000) { i = src.length; return SKIPPED; }
      ws();
      const c = src[i];
      if (c === '"' || c === "'") return str();
      if (c === "{" || c === "[") {
        const array = c === "[", out = array ? [] : {};
        i++;
        for (;;) {
          ws();
          if (i >= src.length) return SKIPPED;
          if (src[i] === (array ? "]" : "}")) { i++; return out; }
          let key = null;
          if (!array) {
            if (src[i] === '"' || src[i] === "'") key = str();
            else { const m = /^[A-Za-z_$][\w$]*/.exec(src.slice(i, i + 200)); if (!m) { skip(); } else { key = m[0]; i += key.length; } }
            ws();
            if (key === null || src[i] !== ":") { skip(); if (src[i] === ",") i++; continue; }
            i++;
          }
          const v = value();
          if (v !== SKIPPED) {
            if (array) out.push(v);
            else if (!["__proto__", "constructor", "prototype"].includes(key)) out[key] = v;
          }
          ws();
          if (src[i] === ",") i++;
          else if (src[i] !== (array ? "]" : "}")) { skip(); if (src[i] === ",") i++; }
        }
      }
      const m = /^(-?\d+(\.\d+)?|true|false|null)(?![\w$])/.exec(src.slice(i, i + 40));
      if (m) { i += m[0].length; return JSON.parse(m[0]); }
      skip();
      return SKIPPED;
    };
    const v = value();
    return v !== null && typeof v === "object" ? v : {};
  };

  const pairs = (v) => Array.isArray(v) && v.every((p) => Array.isArray(p) && p.length === 2 && p.every((x) => typeof x === "string" && x))
    ? v : undefined;
  // MathJax's macros: name -> definition, or [definition, argument count(, default)]; KaTeX's: "\\name" -> definition
  const macros = (v) => {
    if (!v || typeof v !== "object" || Array.isArray(v)) return undefined;
    const out = {};
    for (const [key, def] of Object.entries(v)) {
      const name = key.replace(/^\\/, "");
      if (!/^[A-Za-z]+$/.test(name)) continue;
      if (typeof def === "string") {
        const args = Math.max(0, ...Array.from(def.matchAll(/#([1-9])/g), (m) => +m[1]));
        out[name] = args ? [def, args] : def;
      } else if (Array.isArray(def) && typeof def[0] === "string" && Number.isInteger(def[1]) && def[1] >= 0 && def[1] <= 9
                 && (def.length === 2 || (def.length === 3 && typeof def[2] === "string"))) out[name] = def;
    }
    return out;
  };
  const tex = {};
  const put = (key, v) => { if (v !== undefined) tex[key] = v; };
  const TAGS = ["none", "ams", "all"];
  for (const s of scripts) {
    const src = s.textContent;
    for (const [re, kind] of [[/\bMathJax\s*=\s*\{/g, 3], [/MathJax\.Hub\.Config\s*\(\s*\{/g, 2],
                              [/renderMathInElement\s*\([^,()]*,\s*\{/g, "katex"]]) {
      for (const m of src.matchAll(re)) {
        const cfg = literal(src, m.index + m[0].length - 1);
        const find = kind === 3 ? cfg.tex || {} : kind === 2 ? cfg.tex2jax || {} : {};
        put("inlineMath", pairs(find.inlineMath));
        put("displayMath", pairs(find.displayMath));
        if (typeof find.processEscapes === "boolean") put("processEscapes", find.processEscapes);
        if (kind === 3) {
          put("macros", macros(find.macros));
          if (TAGS.includes(find.tags)) put("tags", find.tags);
        } else if (kind === 2) {
          const T = cfg.TeX || {};
          put("macros", macros(T.Macros));
          const auto = T.equationNumbers && T.equationNumbers.autoNumber;
          if (typeof auto === "string" && TAGS.includes(auto.toLowerCase())) put("tags", auto.toLowerCase());
        } else {
          const d = Array.isArray(cfg.delimiters) ? cfg.delimiters.filter((x) => x && typeof x.left === "string" && x.left && typeof x.right === "string" && x.right) : [];
          if (d.length) {
            put("inlineMath", d.filter((x) => !x.display).map((x) => [x.left, x.right]));
            put("displayMath", d.filter((x) => x.display).map((x) => [x.left, x.right]));
          }
          put("macros", macros(cfg.macros));
        }
      }
    }
  }
  return { tex };
}
