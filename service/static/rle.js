// COCO run-length encoded masks in the browser, and the drawing of tracked instances.
//
// A mask is column-major: runs alternate background / foreground, starting with background.
// The compressed ``counts`` string is pycocotools' format: each run is a variable-length
// number in 5-bit groups (+48 to make printable characters, 0x20 = "more groups follow",
// sign-extended from the last group); runs after the second are deltas from the run two
// places before.

/** Run lengths of a compressed COCO RLE ``counts`` string. */
export function decodeCounts(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= counts.length) throw new Error("truncated RLE counts");
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

/** Runs of an RLE object ``{size: [h, w], counts}`` (string, or an array of numbers). */
export function rleRuns(rle) {
  return typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts.slice();
}

/** Foreground pixel count of an RLE. */
export function rleArea(rle) {
  const runs = rleRuns(rle);
  let area = 0;
  for (let i = 1; i < runs.length; i += 2) area += runs[i];
  return area;
}

/** Decode to a row-major Uint8Array of h*w (1 = foreground). */
export function decodeMask(rle) {
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  const runs = rleRuns(rle);
  let idx = 0;
  for (let i = 0; i < runs.length; i += 1) {
    const end = Math.min(idx + runs[i], h * w);
    if (i % 2 === 1) {
      for (let j = idx; j < end; j += 1) out[(j % h) * w + Math.floor(j / h)] = 1;
    }
    idx = end;
  }
  return out;
}

/** The colour of a track id: golden-ratio hue steps, as ``model.video_io.track_color``. */
export function trackColor(trackId) {
  const hue = (trackId * 0.6180339887498949) % 1.0;
  const s = 0.75;
  const v = 0.95;
  const i = Math.floor(hue * 6.0);
  const f = hue * 6.0 - i;
  const p = v * (1 - s);
  const q = v * (1 - s * f);
  const t = v * (1 - s * (1 - f));
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return rgb.map((c) => Math.round(c * 255));
}

export const MASK_ALPHA = 0.5;

/** Paint the masks of ``instances`` (one colour per track id) into a fresh ImageData. */
export function paintMasks(ctx, instances, width, height) {
  const image = ctx.createImageData(width, height);
  const data = image.data;
  const alpha = Math.round(MASK_ALPHA * 255);
  for (const inst of instances) {
    const [h, w] = inst.segmentation.size;
    if (h !== height || w !== width) continue; // replies are at the size of the sent frame
    const [r, g, b] = trackColor(inst.track_id);
    const mask = decodeMask(inst.segmentation);
    for (let j = 0; j < mask.length; j += 1) {
      if (!mask[j]) continue;
      const o = j * 4;
      data[o] = r;
      data[o + 1] = g;
      data[o + 2] = b;
      data[o + 3] = alpha;
    }
  }
  ctx.putImageData(image, 0, 0);
}

/** Boxes and ``#id class score`` tags of ``instances`` in their track colours. */
export function paintLabels(ctx, instances, width, height) {
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.lineWidth = 2;
  for (const inst of instances) {
    const [r, g, b] = trackColor(inst.track_id);
    const colour = `rgb(${r}, ${g}, ${b})`;
    const [x, y, w, h] = inst.bbox;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x + 1, y + 1, Math.max(w - 2, 1), Math.max(h - 2, 1));
    const text = `#${inst.track_id} ${inst.category_name} ${inst.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 6;
    const ty = y >= 15 ? y - 15 : y;
    ctx.fillStyle = colour;
    ctx.fillRect(x, ty, tw, 15);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 3, ty + 2);
  }
}
