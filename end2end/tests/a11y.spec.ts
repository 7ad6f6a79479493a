import AxeBuilder from "@axe-core/playwright";
import { expect, test, type Page } from "@playwright/test";
import { say, signUp } from "./helpers";

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
    // A conversation with everything a message can carry: format, a mention, a reply with its
    // quote, a reaction, a file, an edit, a deleted one; and the composer replying.
    const tag = `${colorScheme} ${Date.now()}`;
    await say(page, `**bold**, \`code\`, https://example.com ${tag} and a list:\n- one\n- two`);
    await say(page, `to be deleted ${tag}`);
    const gone = page.locator("li.msg", { hasText: `to be deleted ${tag}` });
    await gone.hover();
    page.once("dialog", (d) => d.accept());
    await gone.getByRole("button", { name: "Delete" }).click();
    await expect(gone).toHaveCount(0);
    const first = page.locator("li.msg", { hasText: `https://example.com ${tag}` });
    await first.hover();
    await first.getByRole("button", { name: "React" }).click();
    await first.getByRole("group", { name: "Add a reaction" }).getByRole("button").first().click();
    await expect(first.locator(".chip")).toHaveCount(1);
    await first.hover();
    await first.getByRole("button", { name: "Reply" }).click();
    await say(page, `a reply ${tag}`);
    const reply = page.locator("li.msg", { hasText: `a reply ${tag}` });
    await expect(reply.locator(".quote")).toHaveCount(1);
    const file = `notes-${colorScheme}.txt`;
    await page.locator('input[type="file"]').setInputFiles({ name: file, mimeType: "text/plain", buffer: Buffer.from("notes") });
    await expect(page.locator("li.msg .attachment", { hasText: file })).toHaveCount(1);
    await reply.hover();
    await reply.getByRole("button", { name: "Reply" }).click();
    found.push(...(await violations(page, "conversation")));
    await page.keyboard.press("Escape");
    await page.locator(".members-toggle").click();
    await expect(page.locator(".members li").first()).toBeVisible();
    found.push(...(await violations(page, "member list")));
    for (const dialog of ["Create a room", "New message", "Browse rooms", "Search messages"]) {
      await page.getByRole("button", { name: dialog }).click();
      await expect(page.getByRole("dialog")).toBeVisible();
      if (dialog === "Search messages") {
        await page.getByRole("dialog").getByLabel("Search messages").fill(`"a reply ${tag}"`);
        await expect(page.locator(".search-results .hit")).toHaveCount(1);
      }
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
