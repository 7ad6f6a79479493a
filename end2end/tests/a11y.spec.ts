import AxeBuilder from "@axe-core/playwright";
import { expect, test, type Page } from "@playwright/test";
import { signUp } from "./helpers";

/** Runs axe-core's WCAG 2.1 A and AA rules on the page as it is now. */
async function violations(page: Page, what: string) {
  const result = await new AxeBuilder({ page })
    .withTags(["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"])
    .analyze();
  return result.violations.map(
    (v) => `${what}: ${v.id} (${v.impact}) on ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`,
  );
}

for (const colorScheme of ["light", "dark"] as const) {
  test(`every page passes WCAG 2.1 A/AA checks, signed in and out (${colorScheme})`, async ({ browser }) => {
    const page = await (await browser.newContext({ colorScheme })).newPage();
    const found: string[] = [];
    for (const path of ["/login", "/signup"]) {
      await page.goto(path);
      found.push(...(await violations(page, path)));
    }
    await signUp(page, "Axe");
    found.push(...(await violations(page, "chat")));
    await page.locator(".members-toggle").click();
    await expect(page.locator(".members li").first()).toBeVisible();
    found.push(...(await violations(page, "member list")));
    for (const dialog of ["Create a room", "New message", "Browse rooms"]) {
      await page.getByRole("button", { name: dialog }).click();
      await expect(page.getByRole("dialog")).toBeVisible();
      found.push(...(await violations(page, dialog)));
      await page.keyboard.press("Escape");
    }
    await page.goto("/tokens");
    found.push(...(await violations(page, "/tokens")));
    await page.goto("/r/no-such-room");
    found.push(...(await violations(page, "unknown room")));
    expect(found).toEqual([]);
  });
}
