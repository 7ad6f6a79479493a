// Screenshots for looking at the page by eye (not a test): node end2end/shots.mjs BASE OUTDIR
import { chromium } from "@playwright/test";
const [base, out] = process.argv.slice(2);
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args });
const PASSWORD = "correct horse battery";
async function signUp(page, username, display) {
  await page.goto(`${base}/signup`);
  await page.locator('input[name="username"]').fill(username);
  await page.locator('input[name="display_name"]').fill(display);
  await page.locator('input[name="password"]').fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.locator(".conn", { hasText: "connected" }).waitFor();
}
for (const colorScheme of ["light", "dark"]) {
  const ctx = await browser.newContext({ colorScheme, viewport: { width: 1280, height: 800 } });
  const ada = await ctx.newPage();
  const tag = colorScheme[0];
  if (colorScheme === "light") {
    await signUp(ada, "ada", "Ada Lovelace"); // the first account: the admin
  } else {
    await ada.goto(`${base}/login`);
    await ada.locator('input[name="username"]').fill("ada");
    await ada.locator('input[name="password"]').fill(PASSWORD);
    await ada.getByRole("button", { name: "Log in" }).click();
    await ada.locator(".conn", { hasText: "connected" }).waitFor();
  }
  const other = await (await browser.newContext({ colorScheme })).newPage();
  await signUp(other, `max${tag}`, "Max Planck");
  await signUp(await (await browser.newContext()).newPage(), `maria${tag}`, "Maria Sklodowska");
  for (const text of ["Morning! The build is green again.", "Great, shipping the release notes after lunch", "**Reminder:** retro at 3pm, bring `one` idea"]) {
    await other.locator("textarea.body").fill(text);
    await other.locator("textarea.body").press("Enter");
  }
  await ada.locator("textarea.body").pressSequentially("thanks @ma");
  await ada.waitForTimeout(800);
  await ada.screenshot({ path: `${out}/mention-${colorScheme}.png` });
  await ada.goto(`${base}/admin`);
  await ada.waitForTimeout(300);
  await ada.screenshot({ path: `${out}/admin-${colorScheme}.png`, fullPage: true });
  await ada.setViewportSize({ width: 390, height: 844 });
  await ada.screenshot({ path: `${out}/admin-phone-${colorScheme}.png`, fullPage: true });
  await ada.goto(`${base}/`);
  await ada.locator(".conn", { hasText: "connected" }).waitFor();
  await ada.locator("textarea.body").pressSequentially("@ma");
  await ada.waitForTimeout(800);
  await ada.screenshot({ path: `${out}/mention-phone-${colorScheme}.png` });
  await ctx.close();
}
await browser.close();
