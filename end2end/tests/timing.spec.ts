import { test, expect } from "@playwright/test";
import { writeFileSync } from "node:fs";
import { signUp } from "./helpers";

type Marks = { hydrated?: number; connected?: number };

function median(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// Time from navigation to a hydrated, connected chat, taken in the page itself (ms after
// navigation start) so that Playwright's polling does not add to it. The figures are printed;
// with HUBBUB_TIMING_OUT set they are also written there as JSON (bench/run does that against the
// release build).
test("a reload reaches a hydrated, connected chat, and the time is reported", async ({ page }) => {
  await signUp(page);
  await page.addInitScript(() => {
    const marks: Marks = {};
    (window as unknown as { hubbubMarks: Marks }).hubbubMarks = marks;
    const check = () => {
      const send = document.querySelector<HTMLButtonElement>("button.send");
      if (marks.hydrated === undefined && send && !send.disabled) marks.hydrated = performance.now();
      const conn = document.querySelector(".conn");
      if (marks.connected === undefined && conn?.textContent === "connected")
        marks.connected = performance.now();
    };
    new MutationObserver(check).observe(document, {
      subtree: true,
      childList: true,
      attributes: true,
      characterData: true,
    });
  });
  const samples: Required<Marks>[] = [];
  for (let i = 0; i < 5; i++) {
    await page.goto("/");
    await expect(page.locator(".conn")).toHaveText("connected");
    await expect(page.locator("button.send")).toBeEnabled();
    const marks = await page.evaluate(
      () => (window as unknown as { hubbubMarks: Marks }).hubbubMarks,
    );
    expect(marks.hydrated).toBeGreaterThan(0);
    expect(marks.connected).toBeGreaterThanOrEqual(marks.hydrated!);
    samples.push(marks as Required<Marks>);
  }
  const result = {
    runs: samples.length,
    hydrated_ms: median(samples.map((s) => s.hydrated)),
    connected_ms: median(samples.map((s) => s.connected)),
  };
  console.log(
    `navigation → hydrated ${result.hydrated_ms.toFixed(0)} ms, → connected ${result.connected_ms.toFixed(0)} ms (median of ${result.runs})`,
  );
  if (process.env.HUBBUB_TIMING_OUT) writeFileSync(process.env.HUBBUB_TIMING_OUT, JSON.stringify(result));
});
