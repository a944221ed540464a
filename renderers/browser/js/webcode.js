// The HTML+CSS that produces the first viewport of the page, cleaned: elements wholly below the viewport or not
// displayed are dropped; scripts, event handlers, javascript: URLs and oversize data: URIs are removed; the page's
// stylesheets are inlined into one <style>, keeping only rules whose selectors match an element still present.
// opts: {height, maxInline, origin}. Works on a clone; the live page is not changed.
(opts) => {
  const live = [document.documentElement, ...document.documentElement.querySelectorAll("*")];
  const copy = document.documentElement.cloneNode(true);
  const copies = [copy, ...copy.querySelectorAll("*")];
  const kept = new Set();
  let dropRoot = null, dropped = 0;
  for (let i = 0; i < live.length; i++) {
    const el = live[i];
    if (dropRoot && dropRoot.contains(el)) continue;
    dropRoot = null;
    if (document.body && document.body !== el && document.body.contains(el)) {
      const s = getComputedStyle(el);
      const r = el.getBoundingClientRect();
      if (s.display === "none" || (r.top >= opts.height && s.position !== "fixed")) {
        dropRoot = el; dropped++; copies[i].remove(); continue;
      }
    }
    kept.add(el);
  }
  const PSEUDO = /::?(before|after|hover|focus|focus-within|focus-visible|active|visited|link|target|checked|disabled|enabled|placeholder|selection|first-letter|first-line|marker|backdrop|-webkit-[a-z-]+|-moz-[a-z-]+)(\([^)]*\))?/g;
  const used = (selector) => {
    for (const part of selector.split(",")) {
      const sel = part.replace(PSEUDO, "").trim() || "*";
      try { for (const el of document.querySelectorAll(sel)) if (kept.has(el)) return true; } catch (e) { /* invalid */ }
    }
    return false;
  };
  let rulesKept = 0, rulesDropped = 0;
  const rules = (list) => {
    const out = [];
    for (const rule of list) {
      if (rule instanceof CSSStyleRule) {
        if (used(rule.selectorText)) { out.push(rule.cssText); rulesKept++; } else rulesDropped++;
      } else if (rule instanceof CSSImportRule) {
        if (rule.styleSheet) out.push(...rules(rule.styleSheet.cssRules));
      } else if (rule instanceof CSSMediaRule || rule instanceof CSSSupportsRule) {
        const inner = rules(rule.cssRules);
        const head = rule instanceof CSSMediaRule ? "@media " + rule.conditionText : "@supports " + rule.conditionText;
        if (inner.length) out.push(head + " {\n" + inner.join("\n") + "\n}");
      } else if (!(rule instanceof CSSKeyframesRule)) {
        out.push(rule.cssText);
      }
    }
    return out;
  };
  const css = [];
  for (const sheet of document.styleSheets) {
    try { css.push(...rules(sheet.cssRules)); } catch (e) { /* unreadable sheet */ }
  }
  const sheets = Array.from(copy.querySelectorAll("style, link")).filter(
    (el) => el.localName === "style" || /stylesheet/i.test(el.getAttribute("rel") || ""));
  const firstSheet = sheets.shift() || null;
  sheets.forEach((el) => el.remove());
  for (const el of copy.querySelectorAll("link")) if (el !== firstSheet) el.remove();
  for (const el of copy.querySelectorAll("script, noscript, meta[http-equiv], base, template")) el.remove();
  let inlineDropped = 0;
  for (const el of copy.querySelectorAll("*")) {
    for (const a of Array.from(el.attributes)) {
      const v = a.value;
      if (a.name.startsWith("on") || /^\s*javascript:/i.test(v)) el.removeAttribute(a.name);
      else if (v.length > opts.maxInline && /data:/i.test(v)) { el.setAttribute(a.name, ""); inlineDropped++; }
    }
  }
  const walker = document.createTreeWalker(copy, NodeFilter.SHOW_COMMENT);
  const comments = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) comments.push(n);
  comments.forEach((c) => c.remove());
  let text = css.join("\n").split(opts.origin).join("/");
  text = text.replace(new RegExp('url\\("data:[^"]{' + opts.maxInline + ',}"\\)', "g"), 'url("")');
  const style = document.createElement("style");
  style.textContent = "\n" + text + "\n";
  if (firstSheet) firstSheet.replaceWith(style);
  else (copy.querySelector("head") || copy).prepend(style);
  return { html: "<!DOCTYPE html>\n" + copy.outerHTML, dropped, rulesKept, rulesDropped, inlineDropped };
};
