// Runs the jobs of a jobs.json on onnxruntime-web (wasm) in Debian's headless Chromium.
// Usage: node ort_web.mjs BASE_URL JOBS.json RESULTS.json PROFILE_DIR
// RESULTS.json maps each job id to {dims, data} or {error}.
import { writeFileSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";

// puppeteer-core lives in the toolchain's node_modules outside the clone (NODE_PATH)
const require = createRequire(process.env.NODE_PATH + "/");
const puppeteer = require("puppeteer-core");

const [base, jobsPath, resultsPath, profile] = process.argv.slice(2);
const jobs = JSON.parse(readFileSync(jobsPath, "utf8"));
const browser = await puppeteer.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/index.html`, { waitUntil: "load" });
  const results = {};
  for (const job of jobs) {
    results[job.id] = await page.evaluate((j) => runJob(j), job);
  }
  writeFileSync(resultsPath, JSON.stringify(results));
} finally {
  await browser.close();
}
