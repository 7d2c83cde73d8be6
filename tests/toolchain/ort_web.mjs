// Runs the jobs of a jobs.json on onnxruntime-web in Debian's headless Chromium.
// Usage: node ort_web.mjs PAGE_URL JOBS.json RESULTS.json PROFILE_DIR
// RESULTS.json maps each job id to {dims, data} or {error}, and, for a verbose job, {placement}:
// execution provider -> {count, nodes}: how many nodes onnxruntime placed on it and which, as
// "OpType (node name)" (no names when one provider has every node). Its key
// "peak_kb" holds the peak resident memory of Chromium's processes over the whole run, by process
// type ("browser", "renderer", "gpu-process", ...): the renderer holds the page and onnxruntime's
// wasm heap, the GPU process WebGPU's buffers (in its memory, on the software adapter).
import { writeFileSync, readFileSync } from "node:fs";
import { launch, peakKb } from "./chromium.mjs";

// onnxruntime's verbose log lists the placement after "Node placements": a line "Node(s) placed on
// [<provider>]. Number of nodes: <n>", then one line "<OpType> (<name>)" a node; or, when one
// provider has them all, the line "All nodes placed on [<provider>]. Number of nodes: <n>" alone.
function placement(lines) {
  const placed = {};
  let provider = null;
  for (const line of lines) {
    const header = line.match(/(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (header) {
      provider = header[1];
      placed[provider] = { count: Number(header[2]), nodes: [] };
      continue;
    }
    const node = provider && line.match(/VerifyEachNodeIsAssignedToAnEp\]\s+(\S+ \(.*\))\s*$/);
    if (node) placed[provider].nodes.push(node[1]);
    else if (provider && !/VerifyEachNodeIsAssignedToAnEp/.test(line)) provider = null;
  }
  return placed;
}

const [pageUrl, jobsPath, resultsPath, profile] = process.argv.slice(2);
const jobs = JSON.parse(readFileSync(jobsPath, "utf8"));
const browser = await launch(profile);
try {
  const page = await browser.newPage();
  let lines = [];
  page.on("console", (message) => lines.push(message.text()));
  await page.goto(pageUrl, { waitUntil: "load" });
  const results = {};
  for (const job of jobs) {
    lines = [];
    const result = await page.evaluate((j) => runJob(j), job);
    if (job.verbose) result.placement = placement(lines);
    results[job.id] = result;
  }
  results.peak_kb = peakKb(browser.process().pid);
  writeFileSync(resultsPath, JSON.stringify(results));
} finally {
  await browser.close();
}
