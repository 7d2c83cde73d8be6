// Debian's headless Chromium, as the toolchain's browser tests launch it, and its memory.
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";

// puppeteer-core lives in the toolchain's node_modules outside the clone (NODE_PATH)
const require = createRequire(process.env.NODE_PATH + "/");
const puppeteer = require("puppeteer-core");

// WebGPU on SwiftShader, Chromium's software Vulkan: no GPU needed. It is only exposed to pages of a
// secure context (they are served from 127.0.0.1).
const WEBGPU = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-features=Vulkan"];

// A headless Chromium with WebGPU, or with no GPU at all (`webgpu` false: navigator.gpu then gives
// no adapter, as on a machine whose browser has no WebGPU).
export function launch(profile, webgpu = true) {
  return puppeteer.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    protocolTimeout: 900000,  // a large model on the software adapter runs for minutes
    args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", ...(webgpu ? WEBGPU : ["--disable-gpu"])],
  });
}

// VmHWM (peak resident set, kB) of the browser and of every process below it, summed by process
// type ("browser", "renderer", "gpu-process", ...).
export function peakKb(root) {
  const children = {};
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const parent = Number(readFileSync(`/proc/${entry}/stat`, "utf8").split(") ")[1].split(" ")[1]);
      (children[parent] ||= []).push(Number(entry));
    } catch {}  // the process ended meanwhile
  }
  const peaks = {};
  const visit = (pid) => {
    try {
      const type = (readFileSync(`/proc/${pid}/cmdline`, "utf8").match(/--type=([\w-]+)/) || [null, "browser"])[1];
      const hwm = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmHWM:\s+(\d+)/);
      if (hwm) peaks[type] = (peaks[type] || 0) + Number(hwm[1]);
    } catch {}
    for (const child of children[pid] || []) visit(child);
  };
  visit(root);
  return peaks;
}
