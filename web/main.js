// The demo page: load an image, paint a mask, fill it with contextual_attention::fill on the
// browser's WebGPU (the bindings in web/src/lib.rs, built by scripts/web.sh), in a worker
// (worker.js) so that the page stays responsive.
// The page's state is in document.body.dataset.state (loading, ready, filling, done, error) so
// that a test driving the page knows when to look.

const $ = (id) => document.getElementById(id);
const imageCanvas = $('image'), maskCanvas = $('mask'), resultCanvas = $('result'), flowCanvas = $('flow');
const image = imageCanvas.getContext('2d', { willReadFrequently: true });
const mask = maskCanvas.getContext('2d', { willReadFrequently: true });
let busy = false, loaded = false, backendReady = false;

function say(text, isError = false) {
  $('message').textContent = text;
  $('message').className = isError ? 'error' : '';
}
function setState(state) { document.body.dataset.state = state; }
function updateButtons() { $('fill').disabled = busy || !loaded || !backendReady; }

// Images are drawn at most `size` pixels on their longer side (the browser resamples).
function fit(w, h) {
  const size = Number($('size').value);
  const s = Math.min(1, size / Math.max(w, h));
  return [Math.max(1, Math.round(w * s)), Math.max(1, Math.round(h * s))];
}
function resizeAll(w, h) {
  for (const c of [imageCanvas, maskCanvas, resultCanvas, flowCanvas]) { c.width = w; c.height = h; }
}
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not read ${url} as an image`));
    img.src = url;
  });
}
async function showImage(url, maskUrl) {
  const img = await loadImage(url);
  const [w, h] = fit(img.naturalWidth, img.naturalHeight);
  resizeAll(w, h);
  image.drawImage(img, 0, 0, w, h);
  mask.clearRect(0, 0, w, h);
  if (maskUrl) {
    // White = hole in the mask file; drawn red on the overlay, without smoothing.
    const m = await loadImage(maskUrl);
    const tmp = document.createElement('canvas');
    tmp.width = w; tmp.height = h;
    const t = tmp.getContext('2d', { willReadFrequently: true });
    t.imageSmoothingEnabled = false;
    t.drawImage(m, 0, 0, w, h);
    const src = t.getImageData(0, 0, w, h).data;
    const out = mask.createImageData(w, h);
    for (let p = 0; p < w * h; p++) {
      if (src[4 * p] > 0 || src[4 * p + 1] > 0 || src[4 * p + 2] > 0) {
        out.data[4 * p] = 255; out.data[4 * p + 3] = 255;
      }
    }
    mask.putImageData(out, 0, 0);
  }
  for (const c of [resultCanvas, flowCanvas]) c.getContext('2d').clearRect(0, 0, w, h);
  loaded = true;
  updateButtons();
  say(`${w}×${h} image. Paint over what should go, then press Fill.`);
}

// Painting: round strokes of the brush's width on the overlay.
let painting = false, last = null;
function at(e) {
  const r = maskCanvas.getBoundingClientRect();
  return [(e.clientX - r.left) * maskCanvas.width / r.width, (e.clientY - r.top) * maskCanvas.height / r.height];
}
function stroke(from, to) {
  mask.strokeStyle = mask.fillStyle = 'rgb(255,0,0)';
  mask.lineWidth = Number($('brush').value);
  mask.lineCap = 'round';
  mask.beginPath(); mask.moveTo(...from); mask.lineTo(...to); mask.stroke();
}
maskCanvas.addEventListener('pointerdown', (e) => {
  if (busy) return;
  painting = true; last = at(e); stroke(last, last);
  maskCanvas.setPointerCapture(e.pointerId);
});
maskCanvas.addEventListener('pointermove', (e) => { if (painting) { const p = at(e); stroke(last, p); last = p; } });
maskCanvas.addEventListener('pointerup', () => { painting = false; });

$('clear').onclick = () => mask.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
$('file').onchange = async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const url = URL.createObjectURL(file);
  try { await showImage(url); } catch (err) { say(err.message, true); } finally { URL.revokeObjectURL(url); }
};
$('example').onclick = () => showImage('example.png', 'example_mask.png').catch((err) => say(err.message, true));

// Where fills run; it answers every message with one of its own (worker.js's header).
const worker = new Worker('worker.js', { type: 'module' });
let started = 0, size = [0, 0];

$('fill').onclick = () => {
  const [w, h] = [imageCanvas.width, imageCanvas.height];
  const rgba = image.getImageData(0, 0, w, h).data;
  const overlay = mask.getImageData(0, 0, w, h).data;
  const hole = new Uint8Array(w * h);
  let count = 0;
  for (let p = 0; p < w * h; p++) if (overlay[4 * p + 3] > 0) { hole[p] = 1; count++; }
  if (count === 0) { say('Nothing to fill: paint over the area to remove first.', true); return; }
  if (count === w * h) { say('The mask covers the whole image: there is nothing to copy from.', true); return; }
  busy = true; updateButtons(); setState('filling');
  $('progress').value = 0;
  say(`Filling ${count} pixels (${(100 * count / (w * h)).toFixed(1)} % of the image)…`);
  started = performance.now();
  size = [w, h];
  const bytes = new Uint8Array(rgba.buffer);
  worker.postMessage({ type: 'fill', rgba: bytes, hole, width: w, height: h }, [bytes.buffer, hole.buffer]);
};

function ready(msg) {
  if (msg.adapter) {
    $('adapter').textContent = `WebGPU adapter: ${msg.adapter}`;
    if (msg.software) {
      $('adapter').textContent += ' — a software emulation of a GPU, far slower than a real one; ' +
        'on this machine the CPU path (?backend=cpu) is faster.';
    }
  } else {
    // No WebGPU: say why and how to get it; fill still works on the CPU, slowly.
    $('adapter').textContent = msg.noWebgpu.charAt(0).toUpperCase() + msg.noWebgpu.slice(1);
    $('adapter').className = 'error';
    say(`Fills will run on the CPU (${msg.cpu}), far slower than on a GPU.`, true);
  }
  backendReady = true;
  updateButtons();
  setState('ready');
}

function filled(msg) {
  const [w, h] = size;
  resultCanvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(msg.result.buffer), w, h), 0, 0);
  flowCanvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(msg.flow.buffer), w, h), 0, 0);
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  say(`Filled in ${seconds} s: ${msg.calls} layer calls over ${msg.levels} pyramid levels.`);
  busy = false; updateButtons(); setState('done');
}

worker.onmessage = ({ data: msg }) => {
  if (msg.type === 'ready') ready(msg);
  else if (msg.type === 'progress') { $('progress').max = msg.total; $('progress').value = msg.done; }
  else if (msg.type === 'filled') filled(msg);
  else if (msg.type === 'error') {
    say(busy ? `Fill failed: ${msg.message}` : `The page could not start: ${msg.message}`, true);
    busy = false; updateButtons(); setState('error');
  }
};
worker.onerror = (e) => {
  say(`The worker failed: ${e.message}`, true);
  busy = false; updateButtons(); setState('error');
};

// ?size=N picks the largest side; ?backend=cpu runs on the CPU even where WebGPU exists (to compare).
const query = new URLSearchParams(location.search);
if (query.has('size')) $('size').value = query.get('size');
worker.postMessage({ type: 'start', cpu: query.get('backend') === 'cpu' });
