// The page's worker: the wasm module and every fill run here, so the page stays responsive and
// shows progress whatever the backend (the CPU path computes for seconds at a time).
// Messages in: {type: 'start', cpu}, {type: 'fill', rgba, hole, width, height}.
// Messages out: {type: 'ready', adapter, software} or {type: 'ready', noWebgpu, cpu};
// {type: 'progress', done, total}; {type: 'filled', result, flow, calls, levels}; {type: 'error', message}.
import loadWasm, { init_gpu, adapter_is_software, use_cpu, fill } from './pkg/contextual_attention_web.js';

const text = (err) => String(err?.message ?? err);

async function start(cpu) {
  try {
    await loadWasm();
  } catch (err) {
    postMessage({ type: 'error', message: `could not load the WebAssembly module (pkg/): ${text(err)}; build it with scripts/web.sh` });
    return;
  }
  try {
    if (cpu) throw new Error('the CPU was asked for (?backend=cpu)');
    const adapter = await init_gpu();
    postMessage({ type: 'ready', adapter, software: adapter_is_software() });
  } catch (err) {
    postMessage({ type: 'ready', noWebgpu: text(err), cpu: use_cpu() });
  }
}

async function fillImage({ rgba, hole, width, height }) {
  try {
    const out = await fill(rgba, hole, width, height, (done, total) => postMessage({ type: 'progress', done, total }));
    const [result, flow, calls, levels] = [out.result, out.flow, out.calls, out.levels];
    out.free();
    postMessage({ type: 'filled', result, flow, calls, levels }, [result.buffer, flow.buffer]);
  } catch (err) {
    postMessage({ type: 'error', message: text(err) });
  }
}

onmessage = ({ data }) => {
  if (data.type === 'start') start(data.cpu);
  else if (data.type === 'fill') fillImage(data);
};
