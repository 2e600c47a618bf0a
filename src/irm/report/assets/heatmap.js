/* IRMHeatmap: an interactive layer x hidden-index heatmap of IRM outputs, on a canvas.
   Used by the `irm serve` playground and by `irm report` pages (inlined there).

   const map = new IRMHeatmap(element);
   map.setData({values: Float32Array (layer-major: values[k * hidden + h]), layers: [0, 1, ...], title});

   Rows are host layers (bottom to top), columns hidden indices. When more indices are
   visible than the plot has pixel columns, each pixel column shows the value of largest
   magnitude among its indices (as the PNG heatmaps do), so a one-index stripe never
   disappears. Hover: layer, index and value. Wheel: zoom the index axis around the
   cursor; drag: pan; double click: everything. The indices of largest mean |value| over
   layers are marked above the plot and listed below it. No dependencies. */
(function () {
  "use strict";
  const MARGIN = { left: 44, right: 70, top: 18, bottom: 30 };
  const TOP_K = 5;
  const MAGMA = [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]];
  const DIVERGING = [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]];

  function ramp(stops, t) {
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t));
    const f = t - i;
    return stops[i].map((c, j) => Math.round(c + f * (stops[i + 1][j] - c)));
  }

  function format(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 1000 || a < 0.001 ? v.toExponential(2) : v.toPrecision(3);
  }

  class IRMHeatmap {
    constructor(element, options) {
      this.element = element;
      this.options = Object.assign({ height: 260, label: "IRM output" }, options || {});
      element.classList.add("irm-heatmap");
      this.canvas = document.createElement("canvas");
      this.canvas.style.height = this.options.height + "px";
      this.tip = document.createElement("div");
      this.tip.className = "irm-heatmap-tip";
      this.caption = document.createElement("div");
      this.caption.className = "irm-heatmap-caption";
      element.replaceChildren(this.canvas, this.tip, this.caption);
      this.data = null;
      this.view = [0, 1];
      this.canvas.addEventListener("mousemove", (e) => this.hover(e));
      this.canvas.addEventListener("mouseleave", () => this.hideTip());
      this.canvas.addEventListener("wheel", (e) => this.zoom(e), { passive: false });
      this.canvas.addEventListener("mousedown", (e) => (this.drag = { x: e.clientX, view: this.view.slice() }));
      window.addEventListener("mouseup", () => (this.drag = null));
      this.canvas.addEventListener("dblclick", () => { this.view = [0, this.data ? this.data.hidden : 1]; this.draw(); });
      window.addEventListener("resize", () => this.draw());
    }

    static decode(base64) {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      return new Float32Array(bytes.buffer);
    }

    setData({ values, layers, title, signed, keepView }) {
      const hidden = values.length / layers.length;
      let max = 0, negative = false;
      for (const v of values) { const a = Math.abs(v); if (a > max) max = a; if (v < 0) negative = true; }
      const profile = new Float32Array(hidden);
      for (let k = 0; k < layers.length; k++)
        for (let h = 0; h < hidden; h++) profile[h] += Math.abs(values[k * hidden + h]) / layers.length;
      const top = Array.from(profile.keys()).sort((a, b) => profile[b] - profile[a]).slice(0, TOP_K);
      const same = this.data && this.data.hidden === hidden;
      this.data = { values, layers, hidden, max: max || 1, signed: signed === undefined ? negative : signed, profile, top, title: title || "" };
      if (!keepView || !same) this.view = [0, hidden];
      this.element.dataset.top = top.join(",");
      this.draw();
    }

    plot() {
      const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      return { x: MARGIN.left, y: MARGIN.top, w: Math.max(10, w - MARGIN.left - MARGIN.right), h: Math.max(10, h - MARGIN.top - MARGIN.bottom) };
    }

    color(v) {
      const d = this.data;
      return d.signed ? ramp(DIVERGING, 0.5 + v / (2 * d.max)) : ramp(MAGMA, Math.abs(v) / d.max);
    }

    draw() {
      const d = this.data, c = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      c.width = Math.round(c.clientWidth * ratio);
      c.height = Math.round(c.clientHeight * ratio);
      const ctx = c.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, c.clientWidth, c.clientHeight);
      if (!d) return;
      const p = this.plot(), [x0, x1] = this.view, span = x1 - x0;
      const cols = Math.max(1, Math.min(Math.round(p.w), span)), rows = d.layers.length;
      const image = ctx.createImageData(cols, rows);
      for (let k = 0; k < rows; k++) {
        for (let col = 0; col < cols; col++) {
          const a = x0 + Math.floor((col * span) / cols), b = Math.max(a + 1, x0 + Math.floor(((col + 1) * span) / cols));
          let v = 0;
          for (let h = a; h < b; h++) { const x = d.values[k * d.hidden + h]; if (Math.abs(x) > Math.abs(v)) v = x; }
          const [r, g, bl] = this.color(v), i = 4 * ((rows - 1 - k) * cols + col);
          image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = bl; image.data[i + 3] = 255;
        }
      }
      const off = document.createElement("canvas");
      off.width = cols; off.height = rows;
      off.getContext("2d").putImageData(image, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, p.x, p.y, p.w, p.h);
      this.axes(ctx, p);
      this.caption.textContent = (d.title ? d.title + " — " : "") + "top indices (mean |value| over layers): " +
        d.top.map((h) => `${h} (${format(d.profile[h])})`).join(", ") + (span < d.hidden ? `; showing ${x0}-${x1 - 1} of ${d.hidden}` : "");
    }

    axes(ctx, p) {
      const d = this.data, [x0, x1] = this.view;
      ctx.fillStyle = "#333"; ctx.strokeStyle = "#333"; ctx.font = "11px sans-serif";
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      const rows = d.layers.length, every = Math.ceil(rows / 12);
      for (let k = 0; k < rows; k += every) ctx.fillText(String(d.layers[k]), p.x - 4, p.y + p.h - (k + 0.5) * (p.h / rows));
      ctx.save(); ctx.translate(10, p.y + p.h / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center"; ctx.fillText("layer", 0, 0); ctx.restore();
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      const rough = Math.max(1, (x1 - x0) / 10), power = Math.pow(10, Math.floor(Math.log10(rough)));
      const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
      for (let h = Math.ceil(x0 / step) * step; h < x1; h += step) {
        const x = p.x + ((h - x0 + 0.5) / (x1 - x0)) * p.w;
        ctx.fillRect(x, p.y + p.h, 1, 3); ctx.fillText(String(h), x, p.y + p.h + 4);
      }
      ctx.fillText("hidden index", p.x + p.w / 2, p.y + p.h + 16);
      ctx.fillStyle = "#0a7";
      for (const h of d.top) {
        if (h < x0 || h >= x1) continue;
        const x = p.x + ((h - x0 + 0.5) / (x1 - x0)) * p.w;
        ctx.beginPath(); ctx.moveTo(x - 5, p.y - 10); ctx.lineTo(x + 5, p.y - 10); ctx.lineTo(x, p.y - 2); ctx.fill();
      }
      const bx = p.x + p.w + 12, steps = 64;
      for (let i = 0; i < steps; i++) {
        const t = i / (steps - 1), v = d.signed ? (2 * t - 1) * d.max : t * d.max;
        const [r, g, b] = this.color(v);
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.fillRect(bx, p.y + p.h - ((i + 1) * p.h) / steps, 12, p.h / steps + 1);
      }
      ctx.fillStyle = "#333"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
      ctx.fillText(format(d.max), bx + 15, p.y + 4);
      ctx.fillText(d.signed ? format(-d.max) : "0", bx + 15, p.y + p.h - 4);
    }

    cell(e) {
      const d = this.data;
      if (!d) return null;
      const rect = this.canvas.getBoundingClientRect(), p = this.plot();
      const x = e.clientX - rect.left - p.x, y = e.clientY - rect.top - p.y;
      if (x < 0 || y < 0 || x >= p.w || y >= p.h) return null;
      const [x0, x1] = this.view, rows = d.layers.length;
      const k = rows - 1 - Math.floor((y / p.h) * rows);
      const a = x0 + Math.floor((x / p.w) * (x1 - x0)), b = Math.max(a + 1, x0 + Math.floor(((x + 1) / p.w) * (x1 - x0)));
      let h = a;
      for (let i = a; i < Math.min(b, x1); i++) if (Math.abs(d.values[k * d.hidden + i]) > Math.abs(d.values[k * d.hidden + h])) h = i;
      return { k, h, layer: d.layers[k], value: d.values[k * d.hidden + h], px: x + p.x, py: y + p.y };
    }

    hover(e) {
      if (this.drag && this.data) {
        const p = this.plot(), span = this.drag.view[1] - this.drag.view[0];
        const shift = Math.round(((this.drag.x - e.clientX) / p.w) * span);
        const start = Math.min(this.data.hidden - span, Math.max(0, this.drag.view[0] + shift));
        this.view = [start, start + span]; this.draw();
      }
      const c = this.cell(e);
      if (!c) return this.hideTip();
      this.tip.textContent = `layer ${c.layer} · index ${c.h} · value ${format(c.value)}`;
      this.tip.style.left = Math.min(c.px + 12, this.canvas.clientWidth - 200) + "px";
      this.tip.style.top = Math.max(0, c.py - 28) + "px";
      this.tip.style.display = "block";
      this.element.dataset.hover = this.tip.textContent;
    }

    hideTip() { this.tip.style.display = "none"; }

    zoom(e) {
      const d = this.data;
      if (!d) return;
      e.preventDefault();
      const rect = this.canvas.getBoundingClientRect(), p = this.plot();
      const [x0, x1] = this.view, f = Math.min(1, Math.max(0, (e.clientX - rect.left - p.x) / p.w));
      const centre = x0 + f * (x1 - x0);
      const span = Math.round(Math.min(d.hidden, Math.max(8, (x1 - x0) * (e.deltaY < 0 ? 0.8 : 1.25))));
      const start = Math.round(Math.min(d.hidden - span, Math.max(0, centre - f * span)));
      this.view = [start, start + span];
      this.draw();
    }

    /* Mount every <div class="irm-heatmap" data-layers="[..]" data-values="BASE64"> on the page. */
    static mountAll(root) {
      for (const el of (root || document).querySelectorAll("div.irm-heatmap[data-values]")) {
        const map = new IRMHeatmap(el, { height: Number(el.dataset.height || 260) });
        map.setData({ values: IRMHeatmap.decode(el.dataset.values), layers: JSON.parse(el.dataset.layers), title: el.dataset.title || "" });
      }
    }
  }
  window.IRMHeatmap = IRMHeatmap;
})();
