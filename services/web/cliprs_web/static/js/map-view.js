/**
 * The map: imagery of the indexed areas (raster tiles from the tiler, over Mapbox satellite when
 * a token is configured), area outlines, drawn shapes, and the search hits (a pin at each
 * window's centre plus its footprint). Offline without a token: the style is built here, with
 * no remote base map, glyphs or sprites.
 */

import { keyHeaders } from "./api.js";
import { scoreColorExpression } from "./colors.js";
import { ShapeDrawer } from "./draw.js";
import { bboxPolygon, geometryBbox, unionBbox } from "./geo.js";
import { coveringBounds } from "./tiles.js";

export const DEFAULT_VIEW = { center: [-75.62, 37.67], zoom: 11 };

const EMPTY = { type: "FeatureCollection", features: [] };
const AREA_SOURCE_PREFIX = "area-imagery-";
const BASEMAP = "mapbox-satellite";
const LAYERS = {
  areaOutline: "area-outline",
  shapesFill: "shapes-fill",
  shapesLine: "shapes-line",
  hitFill: "hit-fill",
  hitFootprints: "hit-footprints",
  hitPins: "hit-pins",
};
const RUN_SOURCE = "run-detections";
const RUN_LAYERS = { fill: "run-detections-fill", outline: "run-detections-outline", points: "run-detection-points" };
const HEAT_SOURCE = "heatmap";
export const SHAPE_COLORS = { search: "#ffd43b", area: "#3fd0ff" };

/**
 * The zoom levels an area planned, as runs of consecutive levels: [12, 13, 16] -> [[12, 13], [16]].
 * Each run is one raster source, so the map never asks for a level that was not planned.
 */
export function zoomRuns(zooms) {
  const sorted = [...new Set((zooms ?? []).filter(Number.isInteger))].sort((a, b) => a - b);
  const runs = [];
  for (const z of sorted) {
    const last = runs[runs.length - 1];
    if (last && z === last[last.length - 1] + 1) last.push(z);
    else runs.push([z]);
  }
  return runs;
}

/** The id of an area's imagery source for the zoom run starting at `first` (the lowest: no suffix). */
function imageryId(areaId, first, lowest) {
  return first === lowest ? `${AREA_SOURCE_PREFIX}${areaId}` : `${AREA_SOURCE_PREFIX}${areaId}-z${first}`;
}

/** The area id of an imagery source id, as a string. */
function areaOfImagery(sourceId) {
  return sourceId.slice(AREA_SOURCE_PREFIX.length).split("-")[0];
}

const selectedOrHover = ["any", ["boolean", ["feature-state", "selected"], false], ["boolean", ["feature-state", "hover"], false]];

/** The id a hit is known by on the map and in the list. */
export function hitId(feature) {
  return feature.id ?? feature.properties?.window_id;
}

export class MapView {
  /**
   * Create the map in `container` and wait for its style to load.
   *
   * @param {HTMLElement} container
   * @param {{
   *   padding: () => {top: number, right: number, bottom: number, left: number},
   *   mapboxToken?: string|null,
   *   onError: (key: string, message: string) => void,
   *   onHitClick: (id: number|string) => void,
   *   onHitHover?: (id: number|string|null) => void,
   *   onHint?: (text: string|null) => void,
   * }} options
   * @returns {Promise<MapView>}
   */
  static create(container, options) {
    const maplibregl = globalThis.maplibregl;
    if (!maplibregl) {
      throw new Error("MapLibre GL JS did not load (vendor/maplibre-gl.js is missing: run services/web/build.sh)");
    }
    const sources = {};
    const layers = [{ id: "background", type: "background", paint: { "background-color": "#1b2230" } }];
    if (options.mapboxToken) {
      // Mapbox satellite raster tiles under the platform's own imagery (needs the network).
      const token = encodeURIComponent(options.mapboxToken);
      sources[BASEMAP] = {
        type: "raster",
        tiles: [`https://api.mapbox.com/v4/mapbox.satellite/{z}/{x}/{y}@2x.jpg90?access_token=${token}`],
        tileSize: 256,
        maxzoom: 22,
        attribution: "© Mapbox © Maxar",
      };
      layers.push({ id: BASEMAP, type: "raster", source: BASEMAP });
    }
    const map = new maplibregl.Map({
      container,
      style: { version: 8, sources, layers },
      center: DEFAULT_VIEW.center,
      zoom: DEFAULT_VIEW.zoom,
      attributionControl: { compact: true, customAttribution: "Imagery served by the CLIP-RS tiler" },
      // Tiles of the tiler and the run's vector tiles carry the API key when reads need one.
      transformRequest: (url) => {
        const headers = keyHeaders(url);
        return Object.keys(headers).length ? { url, headers } : { url };
      },
    });
    map.addControl(new maplibregl.NavigationControl(), "top-right");
    map.addControl(new maplibregl.ScaleControl(), "bottom-right");
    return new Promise((resolve) => {
      map.once("load", () => resolve(new MapView(map, options)));
    });
  }

  constructor(map, { padding, onError, onHitClick, onHitHover = () => {}, onHint = () => {} }) {
    this.map = map;
    this.padding = padding;
    this.onError = onError;
    this.selectedId = null;
    this.hoverId = null;
    this.popup = null;
    this.tilerUrl = "";
    this.tileErrorShown = false;
    this.shapes = {};
    this.addOverlayLayers();
    this.drawer = new ShapeDrawer(map, { onHint });

    map.on("error", (event) => this.handleError(event));
    map.on("click", LAYERS.hitPins, (event) => {
      if (this.drawer.active) return;
      const feature = event.features?.[0];
      if (feature) onHitClick(feature.id);
    });
    map.on("mousemove", LAYERS.hitPins, (event) => {
      if (this.drawer.active) return;
      map.getCanvas().style.cursor = "pointer";
      const id = event.features?.[0]?.id;
      if (id !== undefined && id !== this.hoverId) {
        this.hoverHit(id);
        onHitHover(id);
      }
    });
    // A detection (polygon or point) says what it is when clicked.
    for (const layer of [RUN_LAYERS.fill, RUN_LAYERS.points]) {
      map.on("click", layer, (event) => {
        if (this.drawer.active || map.queryRenderedFeatures(event.point, { layers: [LAYERS.hitPins] }).length) return;
        const feature = event.features?.[0];
        if (feature) this.openDetectionCard(feature, event.lngLat);
      });
      map.on("mouseenter", layer, () => { if (!this.drawer.active) map.getCanvas().style.cursor = "pointer"; });
      map.on("mouseleave", layer, () => { if (!this.drawer.active) map.getCanvas().style.cursor = ""; });
    }
    map.on("mouseleave", LAYERS.hitPins, () => {
      if (this.drawer.active) return;
      map.getCanvas().style.cursor = "";
      this.hoverHit(null);
      onHitHover(null);
    });
  }

  /** Area outlines, drawn shapes and hit layers, above every imagery layer (added below them). */
  addOverlayLayers() {
    const map = this.map;
    for (const id of ["areas", "shapes", "hit-footprints", "hit-pins"]) map.addSource(id, { type: "geojson", data: EMPTY });
    map.addLayer({
      id: LAYERS.areaOutline,
      type: "line",
      source: "areas",
      paint: { "line-color": "#3fd0ff", "line-width": 2, "line-opacity": 0.9 },
    });
    map.addLayer({
      id: LAYERS.shapesFill,
      type: "fill",
      source: "shapes",
      paint: { "fill-color": ["get", "color"], "fill-opacity": 0.08 },
    });
    map.addLayer({
      id: LAYERS.shapesLine,
      type: "line",
      source: "shapes",
      paint: { "line-color": ["get", "color"], "line-width": 2.5, "line-dasharray": [3, 2] },
    });
    map.addLayer({
      id: LAYERS.hitFill,
      type: "fill",
      source: "hit-footprints",
      paint: { "fill-color": scoreColorExpression(), "fill-opacity": ["case", selectedOrHover, 0.18, 0] },
    });
    map.addLayer({
      id: LAYERS.hitFootprints,
      type: "line",
      source: "hit-footprints",
      paint: {
        "line-color": scoreColorExpression(),
        "line-width": ["case", selectedOrHover, 4, 1.5],
      },
    });
    map.addLayer({
      id: LAYERS.hitPins,
      type: "circle",
      source: "hit-pins",
      paint: {
        "circle-color": scoreColorExpression(),
        "circle-radius": ["case", selectedOrHover, 11, 7],
        "circle-stroke-color": ["case", selectedOrHover, "#111111", "#ffffff"],
        "circle-stroke-width": ["case", selectedOrHover, 3, 1.5],
      },
    });
  }

  handleError(event) {
    const sourceId = event.sourceId ?? event.source?.id ?? "";
    if (sourceId.startsWith(AREA_SOURCE_PREFIX)) {
      // A 404 just outside an area's tiles is normal; say it once, not per tile.
      if (!this.tileErrorShown && event.error?.status !== 404) {
        this.tileErrorShown = true;
        this.onError("tiles", `Some imagery tiles could not be loaded from the tiler at ${this.tilerUrl}.`);
      }
      return;
    }
    if (sourceId === BASEMAP) {
      this.onError("basemap", "Mapbox satellite tiles could not be loaded: check the token (WEB_MAPBOX_TOKEN) and the network.");
      return;
    }
    this.onError("map", `Map error: ${event.error?.message ?? "unknown"}`);
  }

  /**
   * Show the imagery and outline of each area. Raster tiles come from
   * `{tilerUrl}/tiles/{source}/{z}/{x}/{y}` (256 px), asked only where the area has tiles: one
   * source per run of consecutive planned zooms (the tiler fetches nothing else from a billed
   * source, so any other level would be a 404), limited to the tiles covering the area's bbox at
   * the run's finest level. Between runs and above the last the map scales the run's tiles up.
   * Areas in `refresh` are reloaded (their tiles may have been missing while ingesting).
   */
  setAreas(areas, tilerUrl, { refresh = [] } = {}) {
    const map = this.map;
    this.tilerUrl = tilerUrl;
    // Areas that are gone (deleted) lose their imagery; refreshed ones are added again below.
    const known = new Set(areas.map((area) => String(area.id)));
    const reload = new Set(refresh.map(String));
    for (const id of Object.keys(map.getStyle().sources)) {
      if (!id.startsWith(AREA_SOURCE_PREFIX)) continue;
      const areaId = areaOfImagery(id);
      if (!known.has(areaId) || reload.has(areaId)) {
        map.removeLayer(id);
        map.removeSource(id);
      }
    }
    for (const area of areas) {
      const runs = zoomRuns(area.zooms);
      if (!runs.length) continue;
      const lowest = runs[0][0];
      if (map.getSource(imageryId(area.id, lowest, lowest))) continue;
      const source = encodeURIComponent(area.source);
      runs.forEach((run, i) => {
        const id = imageryId(area.id, run[0], lowest);
        const finest = run[run.length - 1];
        map.addSource(id, {
          type: "raster",
          tiles: [`${tilerUrl}/tiles/${source}/{z}/{x}/{y}`],
          tileSize: 256,
          // The fetched tiles overhang the box, and hits may lie in the overhang: show it too.
          bounds: coveringBounds(area.bbox, finest),
          minzoom: run[0],
          maxzoom: finest,
        });
        const layer = { id, type: "raster", source: id, minzoom: run[0] };
        if (i + 1 < runs.length) layer.maxzoom = runs[i + 1][0];
        map.addLayer(layer, LAYERS.areaOutline);
      });
    }
    map.getSource("areas").setData({
      type: "FeatureCollection",
      features: areas.map((area) => ({
        type: "Feature",
        id: area.id,
        geometry: bboxPolygon(area.bbox),
        properties: { name: area.name, status: area.status },
      })),
    });
  }

  /** Fit the view to a box [w, s, e, n]. */
  fitBbox(bbox, { maxZoom = 16, duration = 0 } = {}) {
    this.map.fitBounds([[bbox[0], bbox[1]], [bbox[2], bbox[3]]], { padding: this.padding(), maxZoom, duration });
  }

  /** Fit the view to all areas; with none, go to the default view. */
  fitToAreas(areas) {
    const bbox = unionBbox(areas.map((a) => a.bbox));
    if (bbox) this.fitBbox(bbox);
    else this.map.jumpTo(DEFAULT_VIEW);
  }

  /** The box of the map's visible area, clamped to valid longitudes and latitudes. */
  viewBbox() {
    const b = this.map.getBounds();
    return [Math.max(-180, b.getWest()), Math.max(-85, b.getSouth()), Math.min(180, b.getEast()), Math.min(85, b.getNorth())];
  }

  /** Show (or with null, remove) a drawn shape: "search" (the search restriction) or "area". */
  setShape(key, shape) {
    if (shape) this.shapes[key] = shape;
    else delete this.shapes[key];
    this.map.getSource("shapes").setData({
      type: "FeatureCollection",
      features: Object.entries(this.shapes).map(([kind, s]) => ({
        type: "Feature",
        geometry: s.geometry,
        properties: { kind, color: SHAPE_COLORS[kind] ?? "#ffffff" },
      })),
    });
  }

  /** Start drawing a shape of `kind` for `key`; resolves with the shape, or null if cancelled. */
  draw(kind, key) {
    return new Promise((resolve) => {
      this.drawer.start(kind, {
        color: SHAPE_COLORS[key],
        onDone: (shape) => resolve(shape),
        onCancel: () => resolve(null),
      });
    });
  }

  /** Draw the hits of a search (features carry `score_norm`), replacing the previous ones. */
  showHits(features) {
    this.selectHit(null);
    this.hoverHit(null);
    this.closeCard();
    const footprints = features.filter((f) => f.geometry);
    const pins = features
      .filter((f) => Array.isArray(f.properties?.center))
      .map((f) => ({
        type: "Feature",
        id: hitId(f),
        geometry: { type: "Point", coordinates: f.properties.center },
        properties: { score_norm: f.properties.score_norm, score: f.properties.score },
      }));
    this.map.getSource("hit-footprints").setData({
      type: "FeatureCollection",
      features: footprints.map((f) => ({ type: "Feature", id: hitId(f), geometry: f.geometry, properties: { score_norm: f.properties?.score_norm } })),
    });
    this.map.getSource("hit-pins").setData({ type: "FeatureCollection", features: pins });
  }

  setState(key, previous, id) {
    for (const source of ["hit-footprints", "hit-pins"]) {
      if (previous !== null) this.map.setFeatureState({ source, id: previous }, { [key]: false });
      if (id !== null && id !== undefined) this.map.setFeatureState({ source, id }, { [key]: true });
    }
  }

  /** Highlight one hit as the selected one (or none). */
  selectHit(id) {
    this.setState("selected", this.selectedId, id);
    this.selectedId = id ?? null;
  }

  /** Highlight the hit under the pointer or the focused result (or none). */
  hoverHit(id) {
    this.setState("hover", this.hoverId, id);
    this.hoverId = id ?? null;
  }

  /** Open a hit's card (a popup at its pin) with the given content. */
  openCard(feature, content) {
    const center = feature.properties?.center;
    if (!Array.isArray(center)) return;
    this.closeCard();
    this.popup = new globalThis.maplibregl.Popup({ closeButton: true, maxWidth: "300px", offset: 14, focusAfterOpen: false })
      .setLngLat(center)
      .setDOMContent(content)
      .addTo(this.map);
  }

  closeCard() {
    this.popup?.remove();
    this.popup = null;
  }

  /**
   * Fly to a hit: its footprint framed one zoom level out (so neighbouring hits stay in view),
   * or, without a footprint, its pin at its tile zoom.
   */
  flyToHit(feature) {
    const bbox = geometryBbox(feature.geometry);
    const camera = bbox ? this.map.cameraForBounds([[bbox[0], bbox[1]], [bbox[2], bbox[3]]], { padding: this.padding() }) : null;
    const center = feature.properties?.center;
    if (camera) {
      this.map.flyTo({ ...camera, zoom: Math.min(camera.zoom - 1, 17), duration: 1200 });
    } else if (Array.isArray(center)) {
      this.map.flyTo({ center, zoom: Number(feature.properties?.z ?? this.map.getZoom()), duration: 1200 });
    }
  }

  /**
   * Draw a detection run from its vector tiles (layers "detections": polygons, and
   * "detection_points": polygons too small to see at a zoom), coloured by score from the
   * run's threshold (yellow) to 1 (purple). A new `tilesUrl` (it carries the threshold)
   * replaces the source, so tiles of the old threshold are not reused.
   */
  showRun(tilesUrl, threshold) {
    const map = this.map;
    this.clearRun();
    const lo = Math.min(Math.max(Number(threshold) || 0, 0), 0.999);
    const color = ["interpolate", ["linear"], ["coalesce", ["get", "score"], lo], lo, "#fde725", (lo + 1) / 2, "#21918c", 1, "#440154"];
    map.addSource(RUN_SOURCE, { type: "vector", tiles: [tilesUrl], minzoom: 0, maxzoom: 20 });
    map.addLayer(
      { id: RUN_LAYERS.fill, type: "fill", source: RUN_SOURCE, "source-layer": "detections", paint: { "fill-color": color, "fill-opacity": 0.35 } },
      LAYERS.hitFill,
    );
    map.addLayer(
      { id: RUN_LAYERS.outline, type: "line", source: RUN_SOURCE, "source-layer": "detections", paint: { "line-color": color, "line-width": 1.5 } },
      LAYERS.hitFill,
    );
    map.addLayer(
      {
        id: RUN_LAYERS.points,
        type: "circle",
        source: RUN_SOURCE,
        "source-layer": "detection_points",
        paint: {
          "circle-color": color,
          "circle-radius": ["interpolate", ["linear"], ["coalesce", ["get", "polygons"], 1], 1, 3, 100, 8],
          "circle-stroke-color": "#111111",
          "circle-stroke-width": 1,
        },
      },
      LAYERS.hitFill,
    );
  }

  /** A small card for a clicked detection: its best score, area and windows. */
  openDetectionCard(feature, lngLat) {
    const p = feature.properties ?? {};
    const card = document.createElement("div");
    card.className = "card detection-card";
    const title = document.createElement("strong");
    title.textContent = p.polygons > 1 ? `${p.polygons} detections` : "Detection";
    const lines = [
      `best score ${Number(p.score).toFixed(3)}${p.mean_score !== undefined ? ` · mean ${Number(p.mean_score).toFixed(3)}` : ""}`,
      `${Number(p.window_count ?? 0).toLocaleString("en-US")} window(s) · zoom ${p.z ?? "?"}`,
      `${Math.round(Number(p.area_m2 ?? 0)).toLocaleString("en-US")} m²`,
    ];
    card.append(title, ...lines.map((text) => Object.assign(document.createElement("div"), { className: "card__meta", textContent: text })));
    this.closeCard();
    this.popup = new globalThis.maplibregl.Popup({ closeButton: true, maxWidth: "260px", focusAfterOpen: false })
      .setLngLat(lngLat)
      .setDOMContent(card)
      .addTo(this.map);
  }

  /** Remove the detection layer (if any). */
  clearRun() {
    const map = this.map;
    for (const id of Object.values(RUN_LAYERS)) if (map.getLayer(id)) map.removeLayer(id);
    if (map.getSource(RUN_SOURCE)) map.removeSource(RUN_SOURCE);
  }

  /** The detection features drawn in view now (for the page and the tests). */
  renderedDetections() {
    const layers = Object.values(RUN_LAYERS).filter((id) => this.map.getLayer(id));
    return layers.length ? this.map.queryRenderedFeatures({ layers }) : [];
  }

  /**
   * Draw a heat map (a canvas image as a data URL) over a tile's bounds [w, s, e, n]. An image
   * source's corners are placed in Web Mercator, like the tile itself, so cells line up.
   */
  showHeatmap(dataUrl, bounds) {
    const map = this.map;
    this.clearHeatmap();
    const [w, s, e, n] = bounds;
    map.addSource(HEAT_SOURCE, { type: "image", url: dataUrl, coordinates: [[w, n], [e, n], [e, s], [w, s]] });
    map.addLayer({ id: HEAT_SOURCE, type: "raster", source: HEAT_SOURCE, paint: { "raster-opacity": 0.85, "raster-fade-duration": 0 } }, LAYERS.hitFill);
  }

  /** Remove the heat map (if any). */
  clearHeatmap() {
    if (this.map.getLayer(HEAT_SOURCE)) this.map.removeLayer(HEAT_SOURCE);
    if (this.map.getSource(HEAT_SOURCE)) this.map.removeSource(HEAT_SOURCE);
  }

  /** Recompute the canvas size (after the layout around the map changed, e.g. a banner). */
  resize() {
    this.map.resize();
  }
}
