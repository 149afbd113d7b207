/**
 * Drawing a box or a polygon on the map with plain MapLibre events (no extra library).
 *
 * Box: drag, or click one corner then the other. Polygon: click each corner; finish with a
 * double click, a click on the first corner, or Enter; Backspace removes the last corner.
 * Escape cancels either. While drawing, the map does not pan on drag or zoom on double click.
 */

import { bboxPolygon, geometryBbox } from "./geo.js";

const SOURCE = "draw-sketch";
const LAYERS = { fill: "draw-sketch-fill", line: "draw-sketch-line", vertices: "draw-sketch-vertices" };
const EMPTY = { type: "FeatureCollection", features: [] };
// A pointer that moves less than this between press and release made a click, not a drag.
const CLICK_TOLERANCE_PX = 4;
// A click this close to the first corner closes the polygon.
const CLOSE_TOLERANCE_PX = 10;

export const HINTS = {
  box: "Drag to draw a box (or click two opposite corners). Esc cancels.",
  polygon: "Click to add corners; double-click, click the first corner or press Enter to finish. Backspace undoes, Esc cancels.",
};

/**
 * @typedef {{kind: "box"|"polygon", bbox: number[], geometry: {type: "Polygon", coordinates: number[][][]}}} DrawnShape
 */

export class ShapeDrawer {
  /**
   * @param {import("maplibre-gl").Map} map
   * @param {{onHint: (text: string|null) => void}} options
   */
  constructor(map, { onHint }) {
    this.map = map;
    this.onHint = onHint;
    this.session = null;
    map.addSource(SOURCE, { type: "geojson", data: EMPTY });
    map.addLayer({
      id: LAYERS.fill,
      type: "fill",
      source: SOURCE,
      filter: ["==", ["geometry-type"], "Polygon"],
      paint: { "fill-color": ["get", "color"], "fill-opacity": 0.15 },
    });
    map.addLayer({
      id: LAYERS.line,
      type: "line",
      source: SOURCE,
      filter: ["!=", ["geometry-type"], "Point"],
      paint: { "line-color": ["get", "color"], "line-width": 2, "line-dasharray": [2, 1] },
    });
    map.addLayer({
      id: LAYERS.vertices,
      type: "circle",
      source: SOURCE,
      filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-radius": 4, "circle-color": "#ffffff", "circle-stroke-color": ["get", "color"], "circle-stroke-width": 2 },
    });
  }

  /** Is a drawing in progress? */
  get active() {
    return this.session !== null;
  }

  /**
   * Start drawing; ends with `onDone(shape)` or `onCancel()`. A drawing already in progress is
   * cancelled first.
   * @param {"box"|"polygon"} kind
   * @param {{color?: string, onDone: (shape: DrawnShape) => void, onCancel?: () => void}} handlers
   */
  start(kind, { color = "#ffd43b", onDone, onCancel = () => {} }) {
    this.cancel();
    const map = this.map;
    const session = { kind, color, onDone, onCancel, points: [], anchor: null, pressPx: null, cursor: null, handlers: {} };
    this.session = session;
    map.dragPan.disable();
    map.doubleClickZoom.disable();
    map.boxZoom.disable();
    map.getCanvas().style.cursor = "crosshair";
    this.onHint(HINTS[kind]);

    const on = (type, fn) => {
      session.handlers[type] = fn;
      map.on(type, fn);
    };
    if (kind === "box") {
      const press = (e) => {
        if (e.originalEvent?.button > 0) return;
        e.preventDefault();
        if (!session.anchor) {
          session.anchor = e.lngLat.toArray();
          session.pressPx = e.point;
        }
      };
      const move = (e) => {
        if (!session.anchor) return;
        session.cursor = e.lngLat.toArray();
        this.render();
      };
      const release = (e) => {
        if (!session.anchor) return;
        const moved = session.pressPx ? Math.hypot(e.point.x - session.pressPx.x, e.point.y - session.pressPx.y) : Infinity;
        if (moved <= CLICK_TOLERANCE_PX) {
          if (session.pressPx) {
            session.pressPx = null; // first corner placed by a click; the next release ends the box
            return;
          }
        }
        this.finishBox(e.lngLat.toArray());
      };
      on("mousedown", press);
      on("touchstart", press);
      on("mousemove", move);
      on("touchmove", move);
      on("mouseup", release);
      on("touchend", release);
    } else {
      on("click", (e) => {
        const first = session.points[0];
        if (first && session.points.length >= 3) {
          const firstPx = map.project(first);
          if (Math.hypot(e.point.x - firstPx.x, e.point.y - firstPx.y) <= CLOSE_TOLERANCE_PX) {
            this.finishPolygon();
            return;
          }
        }
        session.points.push(e.lngLat.toArray());
        this.render();
      });
      on("dblclick", (e) => {
        e.preventDefault();
        this.finishPolygon();
      });
      on("mousemove", (e) => {
        session.cursor = e.lngLat.toArray();
        this.render();
      });
    }
    session.keydown = (event) => this.handleKey(event);
    window.addEventListener("keydown", session.keydown, true);
  }

  handleKey(event) {
    const session = this.session;
    if (!session) return;
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      this.cancel();
    } else if (session.kind === "polygon" && event.key === "Enter") {
      event.preventDefault();
      this.finishPolygon();
    } else if (session.kind === "polygon" && event.key === "Backspace" && session.points.length) {
      event.preventDefault();
      session.points.pop();
      this.render();
    }
  }

  /** Draw the sketch: the box from anchor to cursor, or the polygon's corners plus the cursor. */
  render() {
    const session = this.session;
    if (!session) return;
    const props = { color: session.color };
    const features = [];
    if (session.kind === "box" && session.anchor && session.cursor) {
      features.push({ type: "Feature", properties: props, geometry: bboxPolygon(boxOf(session.anchor, session.cursor)) });
    } else if (session.kind === "polygon") {
      const ring = session.cursor ? [...session.points, session.cursor] : session.points;
      if (ring.length >= 3) {
        features.push({ type: "Feature", properties: props, geometry: { type: "Polygon", coordinates: [[...ring, ring[0]]] } });
      } else if (ring.length === 2) {
        features.push({ type: "Feature", properties: props, geometry: { type: "LineString", coordinates: ring } });
      }
      for (const point of session.points) {
        features.push({ type: "Feature", properties: props, geometry: { type: "Point", coordinates: point } });
      }
    }
    this.map.getSource(SOURCE).setData({ type: "FeatureCollection", features });
  }

  finishBox(corner) {
    const session = this.session;
    const bbox = boxOf(session.anchor, corner);
    if (!(bbox[2] > bbox[0] && bbox[3] > bbox[1])) {
      this.cancel();
      return;
    }
    this.end();
    session.onDone({ kind: "box", bbox, geometry: bboxPolygon(bbox) });
  }

  finishPolygon() {
    const session = this.session;
    const ring = dedupe(session.points, this.map);
    if (ring.length < 3) {
      this.onHint("A polygon needs at least three corners. " + HINTS.polygon);
      return;
    }
    const geometry = { type: "Polygon", coordinates: [[...ring, ring[0]]] };
    this.end();
    session.onDone({ kind: "polygon", bbox: geometryBbox(geometry), geometry });
  }

  /** Stop drawing without a shape. */
  cancel() {
    const session = this.session;
    if (!session) return;
    this.end();
    session.onCancel();
  }

  /** Remove the listeners and the sketch, and give the map its gestures back. */
  end() {
    const session = this.session;
    if (!session) return;
    const map = this.map;
    for (const [type, fn] of Object.entries(session.handlers)) map.off(type, fn);
    window.removeEventListener("keydown", session.keydown, true);
    map.dragPan.enable();
    map.doubleClickZoom.enable();
    map.boxZoom.enable();
    map.getCanvas().style.cursor = "";
    map.getSource(SOURCE).setData(EMPTY);
    this.session = null;
    this.onHint(null);
  }
}

/** The [w, s, e, n] spanned by two corners. */
function boxOf(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

/** Drop corners that land on the previous one (a double click adds its point twice). */
function dedupe(points, map) {
  const out = [];
  for (const point of points) {
    const last = out[out.length - 1];
    if (last) {
      const a = map.project(last);
      const b = map.project(point);
      if (Math.hypot(a.x - b.x, a.y - b.y) <= CLICK_TOLERANCE_PX) continue;
    }
    out.push(point);
  }
  return out;
}
