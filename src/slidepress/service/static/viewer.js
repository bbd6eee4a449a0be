// A small DeepZoom viewer of our own: one <canvas>, the service's DeepZoom tiles
// (api/.../deepzoom.dzi and deepzoom_files/LEVEL/COL_ROW.jpeg), drag to pan, wheel,
// double-click, keys or buttons to zoom. Tiles are fetched with the page's Bearer header
// (so no token in a URL) and drawn as ImageBitmaps; coarser tiles already loaded fill in
// while finer ones arrive. Viewers given to DeepZoomViewer.sync() move together.
//
// Coordinates: `cx, cy` is the level-0 pixel at the canvas centre and `scale` the CSS px per
// level-0 px. viewport() answers in image-width units (x / width, y / width), like
// OpenSeadragon's viewport coordinates, so two slides of one size agree exactly.
//
// An overlay (setOverlay) is an image of one pixel per grid cell (the per-cell cosine heat
// map of a compare job) drawn over the tiles, unsmoothed so cells keep square edges, with its
// geometry in the level-0 pixels of the slide the grid was laid on (scaled to this one's
// width, so the compressed view of a container at another resolution lines up too).
"use strict";

class DeepZoomViewer {
  // host: an element to fill; base: "api/uploads/ID/deepzoom" (.dzi and _files/ follow);
  // fetchTile(url) -> Promise<Response>: carries the token; onError(err): a failed load.
  constructor(host, { base, fetchTile, onError, label }) {
    this.host = host;
    this.base = base;
    this.fetchTile = fetchTile;
    this.onError = onError || (() => {});
    this.canvas = document.createElement("canvas");
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", `${label || "slide"}: drag to pan, wheel or +/- to zoom, arrow keys to move, 0 to fit`);
    host.replaceChildren(this.canvas);
    this.ctx = this.canvas.getContext("2d");
    this.tiles = new Map();  // "level/col_row" -> {bitmap} | {pending} | {failed}; oldest first
    this.maxTiles = 400;
    this.active = 0;  // fetches in flight
    this.wanted = [];  // keys to fetch, most urgent first (rebuilt on every draw)
    this.peers = [];
    this.anim = null;
    this.frame = 0;
    this.closed = false;
    this.overlay = null;
    this.ready = this._load();
  }

  // -- the pyramid -----------------------------------------------------------------------------
  async _load() {
    const resp = await this.fetchTile(`${this.base}.dzi`);
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error(`cannot show this slide: ${body.detail || `error ${resp.status}`}`);
    }
    const xml = new DOMParser().parseFromString(await resp.text(), "application/xml");
    const img = xml.documentElement, size = img.getElementsByTagName("Size")[0];
    this.width = Number(size.getAttribute("Width"));
    this.height = Number(size.getAttribute("Height"));
    this.tileSize = Number(img.getAttribute("TileSize"));
    this.overlap = Number(img.getAttribute("Overlap"));
    this.format = img.getAttribute("Format");
    // dz level n halves level n + 1 (rounding up) down to 1 x 1, as the service counts them
    this.dims = [];
    let w = this.width, h = this.height;
    for (;;) {
      this.dims.unshift([w, h]);
      if (w === 1 && h === 1) break;
      w = Math.max(1, Math.ceil(w / 2));
      h = Math.max(1, Math.ceil(h / 2));
    }
    this.maxLevel = this.dims.length - 1;
    // the coarsest level drawn under everything: the first one at least a tile wide
    this.baseLevel = this.dims.findIndex(([lw, lh]) => Math.max(lw, lh) >= this.tileSize);
    if (this.baseLevel < 0) this.baseLevel = this.maxLevel;
    this._observer = new ResizeObserver(() => this.draw());
    this._observer.observe(this.host);
    this._bind();
    this.home(false);
    return this;
  }

  _fit() {
    const r = this.canvas.getBoundingClientRect();
    return Math.min(r.width / this.width, r.height / this.height) || 1;
  }

  _limits() { return [this._fit() * 0.5, Math.max(4, this._fit())]; }

  _clamp() {
    const [lo, hi] = this._limits();
    this.scale = Math.min(hi, Math.max(lo, this.scale));
    this.cx = Math.min(this.width, Math.max(0, this.cx));
    this.cy = Math.min(this.height, Math.max(0, this.cy));
  }

  // -- the view ---------------------------------------------------------------------------------
  viewport() {
    const r = this.canvas.getBoundingClientRect(), W = this.width;
    const w = r.width / this.scale, h = r.height / this.scale;
    return { x: (this.cx - w / 2) / W, y: (this.cy - h / 2) / W, width: w / W, height: h / W };
  }

  setViewport(v, broadcast = false) {
    const r = this.canvas.getBoundingClientRect(), W = this.width;
    this.scale = r.width / (v.width * W);
    this.cx = (v.x + v.width / 2) * W;
    this.cy = (v.y + v.height / 2) * W;
    this._changed(broadcast);
  }

  // the same centre and zoom as `peer`, in image-width units (canvases a subpixel apart in
  // width still show the same region to the pixel)
  follow(peer) {
    this.anim = null;  // the peer leads now: an animation of ours would pull it back
    const k = this.width / peer.width;
    Object.assign(this, { scale: peer.scale / k, cx: peer.cx * k, cy: peer.cy * k });
    this._changed(false);
  }

  home(animate = true) {
    this.to(this._fit(), this.width / 2, this.height / 2, animate);
  }

  zoomBy(factor, px, py, animate = true) {
    const r = this.canvas.getBoundingClientRect();
    if (px === undefined) { px = r.width / 2; py = r.height / 2; }
    // the image point under (px, py) stays put
    const ix = this.cx + (px - r.width / 2) / this.scale, iy = this.cy + (py - r.height / 2) / this.scale;
    const [lo, hi] = this._limits();
    const s = Math.min(hi, Math.max(lo, (this.anim ? this.anim.s1 : this.scale) * factor));
    this.to(s, ix - (px - r.width / 2) / s, iy - (py - r.height / 2) / s, animate);
  }

  panBy(dx, dy) {  // CSS px
    this.cx -= dx / this.scale;
    this.cy -= dy / this.scale;
    this._changed(true);
  }

  // go to scale s centred on (cx, cy), eased over 250 ms (zoom interpolated in log scale)
  to(s, cx, cy, animate = true) {
    if (!animate || this.scale === undefined) {
      this.anim = null;
      Object.assign(this, { scale: s, cx, cy });
      this._changed(true);
      return;
    }
    const a = { t0: performance.now(), s0: this.scale, x0: this.cx, y0: this.cy, s1: s, x1: cx, y1: cy };
    this.anim = a;
    const step = (now) => {
      if (this.anim !== a || this.closed) return;  // replaced, cancelled or closed
      const t = Math.min(1, (now - a.t0) / 250), e = 1 - Math.pow(1 - t, 3);
      this.scale = a.s0 * Math.pow(a.s1 / a.s0, e);
      this.cx = a.x0 + (a.x1 - a.x0) * e;
      this.cy = a.y0 + (a.y1 - a.y0) * e;
      this._changed(true);
      if (t < 1) requestAnimationFrame(step);
      else this.anim = null;
    };
    requestAnimationFrame(step);
  }

  _changed(broadcast) {
    this._clamp();
    this.draw();
    if (broadcast) for (const p of this.peers) p.follow(this);
  }

  static sync(viewers) {
    for (const v of viewers) v.peers = viewers.filter((o) => o !== v);
  }

  // -- input --------------------------------------------------------------------------------------
  _bind() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      c.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY };
      this.anim = null;
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.panBy(e.clientX - drag.x, e.clientY - drag.y);
      drag = { x: e.clientX, y: e.clientY };
    });
    const end = () => { drag = null; c.classList.remove("dragging"); };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      const dy = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;  // lines -> px
      this.zoomBy(Math.exp(-dy * 0.002), e.clientX - r.left, e.clientY - r.top, false);
    }, { passive: false });
    c.addEventListener("dblclick", (e) => {
      const r = c.getBoundingClientRect();
      this.zoomBy(e.shiftKey ? 0.5 : 2, e.clientX - r.left, e.clientY - r.top);
    });
    c.addEventListener("keydown", (e) => {
      const step = 0.1 * c.getBoundingClientRect().width;
      const keys = {
        ArrowLeft: () => this.panBy(step, 0), ArrowRight: () => this.panBy(-step, 0),
        ArrowUp: () => this.panBy(0, step), ArrowDown: () => this.panBy(0, -step),
        "+": () => this.zoomBy(2), "=": () => this.zoomBy(2), "-": () => this.zoomBy(0.5),
        "0": () => this.home(),
      };
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
    });
  }

  // -- drawing --------------------------------------------------------------------------------------
  draw() {
    if (this.closed || this.width === undefined || this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this._draw(); });
  }

  // the tiles of `level` that the view touches, nearest the centre first
  _visible(level, r) {
    const ds = 2 ** (this.maxLevel - level), t = this.tileSize;
    const [lw, lh] = this.dims[level];
    const x0 = (this.cx - r.width / 2 / this.scale) / ds, x1 = (this.cx + r.width / 2 / this.scale) / ds;
    const y0 = (this.cy - r.height / 2 / this.scale) / ds, y1 = (this.cy + r.height / 2 / this.scale) / ds;
    const c0 = Math.max(0, Math.floor(x0 / t)), c1 = Math.min(Math.ceil(lw / t) - 1, Math.floor(x1 / t));
    const r0 = Math.max(0, Math.floor(y0 / t)), r1 = Math.min(Math.ceil(lh / t) - 1, Math.floor(y1 / t));
    const mc = this.cx / ds / t, mr = this.cy / ds / t, out = [];
    for (let row = r0; row <= r1; row++) for (let col = c0; col <= c1; col++) out.push([col, row]);
    return out.sort((a, b) => Math.hypot(a[0] + 0.5 - mc, a[1] + 0.5 - mr) - Math.hypot(b[0] + 0.5 - mc, b[1] + 0.5 - mr));
  }

  _draw() {
    const r = this.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    if (!r.width || !r.height) return;
    const cw = Math.round(r.width * dpr), ch = Math.round(r.height * dpr);
    if (this.canvas.width !== cw || this.canvas.height !== ch) {
      this.canvas.width = cw;
      this.canvas.height = ch;
    }
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#e8e8e8";
    ctx.fillRect(0, 0, cw, ch);
    ctx.imageSmoothingQuality = "high";
    // finest level whose pixels are not smaller than the screen's
    const k = Math.max(0, Math.floor(Math.log2(1 / (this.scale * dpr))));
    const target = Math.max(0, this.maxLevel - k);
    const base = Math.min(this.baseLevel, target);
    const want = [];
    for (let level = base; level <= target; level++) {
      const visible = this._visible(level, r);
      for (const [col, row] of visible) {
        const key = `${level}/${col}_${row}`, got = this.tiles.get(key);
        if (got && got.bitmap) this._tile(got.bitmap, level, col, row, r, dpr);
        else if (!got && (level === target || level === base)) want.push(key);
      }
    }
    if (this.overlay && this.overlay.visible) this._drawOverlay(r, dpr);
    // fetch the target level first, then the backdrop
    const finest = `${target}/`;
    this.wanted = [...want.filter((k2) => k2.startsWith(finest)), ...want.filter((k2) => !k2.startsWith(finest))];
    this._pump();
  }

  _tile(bitmap, level, col, row, r, dpr) {
    const ds = 2 ** (this.maxLevel - level), t = this.tileSize, ov = this.overlap;
    const [lw, lh] = this.dims[level];
    const sx = col ? ov : 0, sy = row ? ov : 0;
    const sw = Math.min(t, lw - t * col), sh = Math.min(t, lh - t * row);
    const toX = (x) => ((x - this.cx) * this.scale + r.width / 2) * dpr;
    const toY = (y) => ((y - this.cy) * this.scale + r.height / 2) * dpr;
    // device-pixel edges, rounded outwards: neighbours overlap by at most a pixel, no seams
    const left = Math.floor(toX(t * col * ds)), right = Math.ceil(toX((t * col + sw) * ds));
    const top = Math.floor(toY(t * row * ds)), bottom = Math.ceil(toY((t * row + sh) * ds));
    this.ctx.drawImage(bitmap, sx, sy, sw, sh, left, top, right - left, bottom - top);
  }

  // overlay: {image (canvas or bitmap, cols x rows), cell (level-0 px per cell of the grid's
  // slide), slideWidth (that slide's level-0 width), alpha, visible}; null removes it
  setOverlay(overlay) {
    this.overlay = overlay;
    this.draw();
  }

  showOverlay(visible) {
    if (this.overlay) this.overlay.visible = visible;
    this.draw();
  }

  _drawOverlay(r, dpr) {
    const o = this.overlay, k = this.width / o.slideWidth, ctx = this.ctx;
    const toX = (x) => ((x * k - this.cx) * this.scale + r.width / 2) * dpr;
    const toY = (y) => ((y * k - this.cy) * this.scale + r.height / 2) * dpr;
    const left = toX(0), top = toY(0);
    const right = toX(o.image.width * o.cell), bottom = toY(o.image.height * o.cell);
    ctx.save();
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = o.alpha;
    ctx.drawImage(o.image, left, top, right - left, bottom - top);
    ctx.restore();
  }

  // -- loading --------------------------------------------------------------------------------------
  _pump() {
    while (this.active < 6 && this.wanted.length && !this.closed) {
      const key = this.wanted.shift();
      if (this.tiles.has(key)) continue;
      this.tiles.set(key, { pending: true });
      this.active++;
      this._fetch(key).then((bitmap) => {
        if (this.closed) { bitmap.close(); return; }
        this._remember(key, { bitmap });
      }).catch((e) => {
        this.tiles.set(key, { failed: true });
        this.onError(e);
      }).finally(() => {
        this.active--;
        this.draw();
      });
    }
  }

  async _fetch(key) {
    const resp = await this.fetchTile(`${this.base}_files/${key}.${this.format}`);
    if (!resp.ok) throw Object.assign(new Error(`tile ${key}: ${resp.status}`), { status: resp.status });
    return createImageBitmap(await resp.blob());
  }

  _remember(key, entry) {
    this.tiles.delete(key);
    this.tiles.set(key, entry);
    for (const [k, v] of this.tiles) {
      if (this.tiles.size <= this.maxTiles) break;
      if (v.pending) continue;
      if (v.bitmap) v.bitmap.close();
      this.tiles.delete(k);
    }
  }

  // tiles in flight or still wanted for the current view (0: everything shown is loaded)
  busy() { return this.active + this.wanted.length; }

  close() {
    this.closed = true;
    if (this._observer) this._observer.disconnect();
    for (const v of this.tiles.values()) if (v.bitmap) v.bitmap.close();
    this.tiles.clear();
    this.host.replaceChildren();
  }
}

window.DeepZoomViewer = DeepZoomViewer;
