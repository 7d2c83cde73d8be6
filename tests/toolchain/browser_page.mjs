// Opens a page in headless Chromium and prints, as JSON, the text of its #log element once the page
// has written a line there (or an error the page raised).
// Usage: node browser_page.mjs PAGE_URL PROFILE_DIR webgpu|no-gpu
import { launch } from "./chromium.mjs";

const [pageUrl, profile, mode] = process.argv.slice(2);
const browser = await launch(profile, mode === "webgpu");
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error.message || error)));
  await page.goto(pageUrl, { waitUntil: "load" });
  const written = page.waitForFunction(() => document.getElementById("log")?.textContent.includes("\n"),
                                       { timeout: 600000, polling: 200 });
  // an error thrown by the page's module ends the wait too
  const failed = new Promise((resolve) => page.on("pageerror", resolve));
  await Promise.race([written, failed]);
  const log = await page.evaluate(() => document.getElementById("log")?.textContent ?? "");
  console.log(JSON.stringify({ log, errors }));
} finally {
  await browser.close();
}
