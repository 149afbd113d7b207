/**
 * The map: imagery of the indexed areas (raster tiles from the tiler), their outlines, and the
 * search hits (pins at each window's centre plus its footprint). Fully offline: the style is
 * built here, with no remote base map, glyphs or sprites.
 */

import { scoreColorExpression } from "./colors.js";

export const DEFAULT_VIEW = { center: [-75.62, 37.67], zoom: 11 };

const EMPTY = { type: "FeatureCollection", features: [] };
const AREA_SOURCE_PREFIX = "area-imagery-";
const LAYERS = {
  areaOutline: "area-outline",
  hitFootprints: "hit-footprints",
  hitPins: "hit-pins",
};

/** A bbox [w, s, e, n] as a GeoJSON Polygon. */
function bboxPolygon([w, s, e, n]) {
  return { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
}

/** The [w, s, e, n] around every position of a geometry, or null. */
function geometryBbox(geometry) {
  const bounds = [Infinity, Infinity, -Infinity, -Infinity];
  const visit = (coords) => {
    if (typeof coords?.[0] === "number") {
      bounds[0] = Math.min(bounds[0], coords[0]);
      bounds[1] = Math.min(bounds[1], coords[1]);
      bounds[2] = Math.max(bounds[2], coords[0]);
      bounds[3] = Math.max(bounds[3], coords[1]);
    } else if (Array.isArray(coords)) {
      coords.forEach(visit);
    }
  };
  visit(geometry?.coordinates);
  return Number.isFinite(bounds[0]) ? bounds : null;
}

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
   *   onError: (key: string, message: string) => void,
   *   onHitClick: (id: number|string) => void,
   * }} options
   * @returns {Promise<MapView>}
   */
  static create(container, options) {
    const maplibregl = globalThis.maplibregl;
    if (!maplibregl) {
      throw new Error("MapLibre GL JS did not load (vendor/maplibre-gl.js is missing: run services/web/build.sh)");
    }
    const map = new maplibregl.Map({
      container,
      style: {
        version: 8,
        sources: {},
        layers: [{ id: "background", type: "background", paint: { "background-color": "#1b2230" } }],
      },
      center: DEFAULT_VIEW.center,
      zoom: DEFAULT_VIEW.zoom,
      attributionControl: { compact: true },
    });
    map.addControl(new maplibregl.NavigationControl(), "top-right");
    map.addControl(new maplibregl.ScaleControl(), "bottom-right");
    return new Promise((resolve) => {
      map.once("load", () => resolve(new MapView(map, options)));
    });
  }

  constructor(map, { padding, onError, onHitClick }) {
    this.map = map;
    this.padding = padding;
    this.onError = onError;
    this.selectedId = null;
    this.tilerUrl = "";
    this.tileErrorShown = false;
    this.addOverlayLayers();

    map.on("error", (event) => this.handleError(event));
    map.on("click", LAYERS.hitPins, (event) => {
      const feature = event.features?.[0];
      if (feature) onHitClick(feature.id);
    });
    map.on("mouseenter", LAYERS.hitPins, () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", LAYERS.hitPins, () => { map.getCanvas().style.cursor = ""; });
  }

  /** Area outlines and hit layers, above every imagery layer (which go in below them). */
  addOverlayLayers() {
    const map = this.map;
    map.addSource("areas", { type: "geojson", data: EMPTY });
    map.addSource("hit-footprints", { type: "geojson", data: EMPTY });
    map.addSource("hit-pins", { type: "geojson", data: EMPTY });
    map.addLayer({
      id: LAYERS.areaOutline,
      type: "line",
      source: "areas",
      paint: { "line-color": "#3fd0ff", "line-width": 2, "line-opacity": 0.9 },
    });
    map.addLayer({
      id: LAYERS.hitFootprints,
      type: "line",
      source: "hit-footprints",
      paint: {
        "line-color": scoreColorExpression(),
        "line-width": ["case", ["boolean", ["feature-state", "selected"], false], 3.5, 1.5],
      },
    });
    map.addLayer({
      id: LAYERS.hitPins,
      type: "circle",
      source: "hit-pins",
      paint: {
        "circle-color": scoreColorExpression(),
        "circle-radius": ["case", ["boolean", ["feature-state", "selected"], false], 10, 7],
        "circle-stroke-color": "#ffffff",
        "circle-stroke-width": 1.5,
      },
    });
  }

  handleError(event) {
    const sourceId = event.sourceId ?? event.source?.id ?? "";
    if (sourceId.startsWith(AREA_SOURCE_PREFIX)) {
      if (!this.tileErrorShown) {
        this.tileErrorShown = true;
        this.onError("tiles", `Some imagery tiles could not be loaded from the tiler at ${this.tilerUrl}.`);
      }
      return;
    }
    this.onError("map", `Map error: ${event.error?.message ?? "unknown"}`);
  }

  /**
   * Show the imagery and outline of each area. Raster tiles come from
   * `{tilerUrl}/tiles/{source}/{z}/{x}/{y}` (256 px), limited to the area's bbox and zooms.
   */
  setAreas(areas, tilerUrl) {
    const map = this.map;
    this.tilerUrl = tilerUrl;
    for (const area of areas) {
      const id = `${AREA_SOURCE_PREFIX}${area.id}`;
      if (map.getSource(id)) continue;
      const zooms = (area.zooms ?? []).filter(Number.isInteger);
      const source = encodeURIComponent(area.source);
      map.addSource(id, {
        type: "raster",
        tiles: [`${tilerUrl}/tiles/${source}/{z}/{x}/{y}`],
        tileSize: 256,
        bounds: area.bbox,
        minzoom: zooms.length ? Math.min(...zooms) : 0,
        maxzoom: zooms.length ? Math.max(...zooms) : 22,
      });
      map.addLayer({ id, type: "raster", source: id }, LAYERS.areaOutline);
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

  /** Fit the view to all areas; with none, go to the default view. */
  fitToAreas(areas) {
    if (!areas.length) {
      this.map.jumpTo(DEFAULT_VIEW);
      return;
    }
    const [w, s, e, n] = areas.reduce(
      (acc, { bbox }) => [
        Math.min(acc[0], bbox[0]), Math.min(acc[1], bbox[1]),
        Math.max(acc[2], bbox[2]), Math.max(acc[3], bbox[3]),
      ],
      [Infinity, Infinity, -Infinity, -Infinity],
    );
    this.map.fitBounds([[w, s], [e, n]], { padding: this.padding(), maxZoom: 16, duration: 0 });
  }

  /** Draw the hits of a search (features carry `score_norm`), replacing the previous ones. */
  showHits(features) {
    this.selectHit(null);
    const footprints = features.filter((f) => f.geometry);
    const pins = features
      .filter((f) => Array.isArray(f.properties?.center))
      .map((f) => ({
        type: "Feature",
        id: hitId(f),
        geometry: { type: "Point", coordinates: f.properties.center },
        properties: f.properties,
      }));
    this.map.getSource("hit-footprints").setData({
      type: "FeatureCollection",
      features: footprints.map((f) => ({ ...f, id: hitId(f) })),
    });
    this.map.getSource("hit-pins").setData({ type: "FeatureCollection", features: pins });
  }

  /** Highlight one hit (or none). */
  selectHit(id) {
    for (const source of ["hit-footprints", "hit-pins"]) {
      if (this.selectedId !== null) this.map.setFeatureState({ source, id: this.selectedId }, { selected: false });
      if (id !== null && id !== undefined) this.map.setFeatureState({ source, id }, { selected: true });
    }
    this.selectedId = id ?? null;
  }

  /**
   * Fly to a hit: its footprint framed one zoom level out (so neighbouring hits stay in view),
   * or, without a footprint, its pin at its tile zoom.
   */
  flyToHit(feature) {
    const bbox = geometryBbox(feature.geometry);
    const camera = bbox
      ? this.map.cameraForBounds([[bbox[0], bbox[1]], [bbox[2], bbox[3]]], { padding: this.padding() })
      : null;
    const center = feature.properties?.center;
    if (camera) {
      this.map.flyTo({ ...camera, zoom: Math.min(camera.zoom - 1, 17), duration: 1500 });
    } else if (Array.isArray(center)) {
      this.map.flyTo({ center, zoom: Number(feature.properties?.z ?? this.map.getZoom()), duration: 1500 });
    }
  }

  /** Recompute the canvas size (after the layout around the map changed, e.g. a banner). */
  resize() {
    this.map.resize();
  }
}
