// Runs one job of transformers_js_run.mjs in Node (onnxruntime-node, CPU) or in Debian's headless
// Chromium (onnxruntime-web: wasm, or WebGPU on the software adapter).
// Usage: node transformers_js.mjs node MODELS_DIR JOB.json RESULTS.json
//        node transformers_js.mjs chromium BASE_URL JOB.json RESULTS.json PROFILE_DIR
// JOB.json: {model, dtype, device, output, images: [{file, width, height}]}, each file a raw
// (height, width, 3) uint8 image. RESULTS.json: {results} or {error}; from Chromium also
// {outside}: the URLs the page asked for that are not under BASE_URL (a CDN, for one).
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { runModel } from "./transformers_js_run.mjs";

// the packages live in the toolchain's node_modules outside the clone (NODE_PATH)
const require = createRequire(process.env.NODE_PATH + "/");
const [mode, where, jobPath, resultsPath, profile] = process.argv.slice(2);
const { images, ...rest } = JSON.parse(readFileSync(jobPath, "utf8"));
const job = {
  ...rest,
  images: images.map(({ file, width, height }) => ({ pixels: Array.from(readFileSync(file)), width, height })),
};

async function inNode() {
  const transformers = await import(require.resolve("@huggingface/transformers"));
  transformers.env.allowRemoteModels = false;
  transformers.env.localModelPath = where;
  try {
    return { results: await runModel(transformers, job) };
  } catch (error) {
    return { error: String((error && error.message) || error) };
  }
}

async function inChromium() {
  const puppeteer = require("puppeteer-core");
  const webgpu = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-features=Vulkan"];
  const browser = await puppeteer.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", ...(job.device === "webgpu" ? webgpu : ["--disable-gpu"])],
  });
  try {
    const page = await browser.newPage();
    const outside = [];
    page.on("request", (request) => {
      if (!request.url().startsWith(where + "/")) outside.push(request.url());
    });
    await page.goto(`${where}/index.html`, { waitUntil: "load" });
    await page.waitForFunction(() => typeof window.runJob === "function");
    return { ...(await page.evaluate((j) => window.runJob(j), job)), outside };
  } finally {
    await browser.close();
  }
}

writeFileSync(resultsPath, JSON.stringify(mode === "node" ? await inNode() : await inChromium()));
