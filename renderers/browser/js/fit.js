// Template layout: scales down (CSS zoom, which the layout follows) every box that is wider than a column or, being in
// one piece, taller than a page: a formula, a table, a wide preformatted line, a fixed-width block. Chromium never
// wraps a formula and never splits a monolithic box, and a column does not clip what overflows it, so such a box would
// run into the next page's strip or below the page's edge, cut in the image while its text is counted whole.
// Widths and heights are read for all boxes before any is changed; the boxes inside a scaled one shrink with it.
// Returns how many boxes were scaled.
() => {
  const root = document.documentElement;
  const s = getComputedStyle(root);
  const px = (v) => parseFloat(v) || 0;
  const columns = parseInt(s.columnCount, 10) || 1;
  const colW = (root.clientWidth - px(s.paddingLeft) - px(s.paddingRight) - (columns - 1) * px(s.columnGap)) / columns;
  const colH = root.clientHeight - px(s.paddingTop) - px(s.paddingBottom);
  const scale = [];
  const visit = (el) => {
    const rs = Array.from(el.getClientRects()).filter((r) => r.width >= 1 && r.height >= 1);
    if (rs.length === 1) {
      const z = Math.min(1, colW / rs[0].width, colH / rs[0].height);
      if (z < 0.999) { scale.push([el, z * 0.995]); return; }
    }
    for (const c of el.children) visit(c);
  };
  for (const c of (document.body || root).children) visit(c);
  for (const [el, z] of scale) el.style.setProperty("zoom", String(z), "important");
  return scale.length;
};
