// Read-only probes of ComfyUI's own frontend, installed as window.__svr2 by test_frontend.py.
// Everything is measured as the user sees it: graph coordinates are mapped to the page through the
// canvas' current view (app.canvas.ds), and "covered" means document.elementFromPoint() at that
// spot is not the graph canvas (a toolbar, the sidebar, a panel, a toast...).
window.__svr2 = (() => {
  const canvasEl = () => app.canvas.canvas;
  const titleHeight = () => LiteGraph.NODE_TITLE_HEIGHT || 30;
  const toPage = (gx, gy) => {
    const p = app.canvas.ds.convertOffsetToCanvas([gx, gy]);
    const r = canvasEl().getBoundingClientRect();
    return [p[0] + r.left, p[1] + r.top];
  };
  const describe = (el) => {
    if (!el) return "nothing (outside the page)";
    const text = (el.innerText || el.getAttribute("aria-label") || "").trim().slice(0, 40);
    return `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${String(el.className).split(" ").slice(0, 3).join(".")}` +
      (text ? ` "${text}"` : "");
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none" && s.opacity !== "0";
  };
  // A node's own DOM content (a video preview, a text box) drawn over its body.
  const ownContent = (el, n) => {
    if (!el || !["VIDEO", "IMG", "TEXTAREA", "INPUT", "CANVAS"].includes(el.tagName)) return false;
    const [x, y, w, h] = n.getBounding(), [ax, ay] = toPage(x, y), [bx, by] = toPage(x + w, y + h);
    const r = el.getBoundingClientRect();
    return r.left >= ax - 1 && r.top >= ay - 1 && r.right <= bx + 1 && r.bottom <= by + 1;
  };
  const links = () => {
    const all = app.graph.links instanceof Map ? [...app.graph.links.values()] : Object.values(app.graph.links || {});
    return all.filter(Boolean);
  };

  return {
    ready: () => !!(window.app && app.graph && app.canvas && app.canvas.ds && window.LiteGraph && canvasEl()),

    nodes: () => app.graph._nodes.map((n) => ({
      id: String(n.id), type: n.type, title: n.title, mode: n.mode,
      registered: !!LiteGraph.registered_node_types[n.type],
      has_errors: !!n.has_errors,
      widgets: (n.widgets || []).map((w) => w.name),
      bounding: Array.from(n.getBounding()),
    })),

    view: () => ({scale: app.canvas.ds.scale, offset: Array.from(app.canvas.ds.offset),
                  viewport: [window.innerWidth, window.innerHeight]}),

    // Title bars (several points along each) and node bodies (corners and centre) that are off
    // the page or under another element.
    covered: () => {
      const problems = [];
      const W = window.innerWidth, H = window.innerHeight, th = titleHeight();
      for (const n of app.graph._nodes) {
        const [x, y, w, h] = n.getBounding();  // includes the title bar
        const spots = [];
        for (const f of [0.04, 0.25, 0.5, 0.75, 0.96]) spots.push(["title", x + f * w, y + th / 2]);
        for (const [fx, fy] of [[0.04, 0.04], [0.96, 0.04], [0.04, 0.96], [0.96, 0.96], [0.5, 0.5]])
          spots.push(["body", x + fx * w, y + th + fy * (h - th)]);
        for (const [part, gx, gy] of spots) {
          const [px, py] = toPage(gx, gy);
          if (px < 0 || py < 0 || px >= W || py >= H) {
            problems.push({node: n.title, part, at: [Math.round(px), Math.round(py)], by: "the edge of the page"});
            continue;
          }
          const el = document.elementFromPoint(px, py);
          if (el !== canvasEl() && !(part === "body" && ownContent(el, n)))
            problems.push({node: n.title, part, at: [Math.round(px), Math.round(py)], by: describe(el)});
        }
      }
      return problems;
    },

    // Pairs of nodes whose boxes (title bar included) intersect.
    overlaps: () => {
      const out = [], ns = app.graph._nodes;
      for (let i = 0; i < ns.length; i++) for (let j = i + 1; j < ns.length; j++) {
        const [ax, ay, aw, ah] = ns[i].getBounding(), [bx, by, bw, bh] = ns[j].getBounding();
        if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah) out.push([ns[i].title, ns[j].title]);
      }
      return out;
    },

    // Links drawn (as LiteGraph's splines) through a third node, where the node hides them.
    hiddenLinks: () => {
      const out = [];
      for (const l of links()) {
        const a = app.graph.getNodeById(l.origin_id), b = app.graph.getNodeById(l.target_id);
        if (!a || !b) continue;
        const p0 = a.getConnectionPos(false, l.origin_slot), p3 = b.getConnectionPos(true, l.target_slot);
        const d = Math.hypot(p3[0] - p0[0], p3[1] - p0[1]) * 0.25;
        const p1 = [p0[0] + d, p0[1]], p2 = [p3[0] - d, p3[1]];
        for (const n of app.graph._nodes) {
          if (n === a || n === b) continue;
          const [x, y, w, h] = n.getBounding();
          for (let k = 1; k < 40; k++) {
            const t = k / 40, u = 1 - t;
            const px = u * u * u * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t * t * t * p3[0];
            const py = u * u * u * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t * t * t * p3[1];
            if (px > x + 2 && px < x + w - 2 && py > y + 2 && py < y + h - 2) {
              out.push({link: `${a.title}.${a.outputs[l.origin_slot].name} -> ${b.title}.${b.inputs[l.target_slot].name}`,
                        behind: n.title});
              break;
            }
          }
        }
      }
      return out;
    },

    // What the frontend shows as a warning or error: toasts, alerts, the missing-nodes dialog.
    notices: () => [...document.querySelectorAll(
        "[role=alert], [role=alertdialog], .p-toast-message, [data-sonner-toast], .p-dialog, [role=dialog]")]
      .filter(visible).map((el) => el.innerText.trim().replace(/\s+/g, " ").slice(0, 300)).filter(Boolean),

    closeNotices: () => {
      let n = 0;
      for (const el of document.querySelectorAll("[role=alert], .p-toast-message, [data-sonner-toast]")) {
        const btn = el.querySelector("button[aria-label*=lose i], .p-toast-close-button, button");
        if (btn && visible(btn)) { btn.click(); n++; }
      }
      return n;
    },

    // Page point of a node's title (or of one of its widgets), for hovering.
    titlePoint: (id) => {
      const n = app.graph.getNodeById(id), [x, y] = n.getBounding();
      return toPage(x + 40, y + titleHeight() / 2);
    },
    widgetPoint: (id, name) => {
      const n = app.graph.getNodeById(id), w = n.widgets.find((w) => w.name === name);
      const wy = (w.y ?? w.last_y) + (LiteGraph.NODE_WIDGET_HEIGHT || 20) / 2;
      return toPage(n.pos[0] + n.size[0] * 0.3, n.pos[1] + wy);
    },
    tooltip: () => {
      const el = [...document.querySelectorAll(".node-tooltip")].find(visible);
      return el ? el.innerText.trim() : null;
    },
    // A spot of bare canvas (no node, no UI over it) to park the mouse on between hovers.
    parkPoint: () => {
      const W = window.innerWidth, H = window.innerHeight;
      for (let py = H * 0.9; py > H * 0.1; py -= 23) for (let px = W * 0.1; px < W * 0.9; px += 31) {
        if (document.elementFromPoint(px, py) !== canvasEl()) continue;
        const r = canvasEl().getBoundingClientRect();
        const [gx, gy] = app.canvas.ds.convertCanvasToOffset([px - r.left, py - r.top]);
        if (!app.graph.getNodeOnPos(gx, gy)) return [px, py];
      }
      return null;
    },

    // The page rectangle holding every node (title bars included), for the thumbnail.
    graphRect: () => {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of app.graph._nodes) {
        const [x, y, w, h] = n.getBounding();
        const [ax, ay] = toPage(x, y), [bx, by] = toPage(x + w, y + h);
        x0 = Math.min(x0, ax); y0 = Math.min(y0, ay); x1 = Math.max(x1, bx); y1 = Math.max(y1, by);
      }
      return [x0, y0, x1 - x0, y1 - y0];
    },
  };
})();
true;
