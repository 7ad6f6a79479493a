import AxeBuilder from "@axe-core/playwright";
import { expect, test } from "@playwright/test";
import { message, OwnServer, PASSWORD, say, signUp } from "./helpers";

const port = Number(process.env.HUBBUB_E2E_PORT ?? 3100) + 2;

test("an admin sees the admin view and disables an account; a member gets 403", async ({ browser }) => {
  // A server of this test's own: its first account is the admin.
  const server = new OwnServer(port);
  await server.start();
  try {
    const admin = await (await browser.newContext()).newPage();
    await signUp(admin, "Ada", server.url);
    const memberCtx = await browser.newContext();
    const member = await memberCtx.newPage();
    const max = await signUp(member, "Max", server.url);
    await say(member, "hello from Max");
    await expect(message(member, "hello from Max")).toHaveAttribute("data-status", "stored");

    // A member is refused, in a tab of their own.
    const peek = await memberCtx.newPage();
    const refused = await peek.goto(`${server.url}/admin`);
    expect(refused?.status()).toBe(403);
    await peek.close();

    // The admin sees what the server is doing.
    const shown = await admin.goto(`${server.url}/admin`);
    expect(shown?.status()).toBe(200);
    await expect(admin.getByRole("heading", { name: "Admin" })).toBeVisible();
    await expect(admin.getByRole("img", { name: /Messages per second on this node/ })).toBeVisible();
    await expect(admin.locator("#websockets")).toHaveText(/^[1-9]/);
    await expect(admin.getByRole("cell", { name: "#general" })).toBeVisible();
    const row = admin.locator(`tr[data-user="${max}"]`);
    await expect(row).toContainText("active");
    await expect(admin.getByRole("cell", { name: "data_dir" })).toBeVisible();

    // Disabling Max closes his page's socket and keeps him out.
    await row.getByRole("button", { name: `Disable @${max}` }).click();
    await expect(admin.getByRole("status")).toContainText("disabled");
    await expect(admin.locator(`tr[data-user="${max}"]`)).toContainText("disabled");
    await expect(member.locator(".conn")).toHaveText("signed out");
    await member.goto(`${server.url}/login`);
    await member.locator('input[name="username"]').fill(max);
    await member.locator('input[name="password"]').fill(PASSWORD);
    await member.getByRole("button", { name: "Log in" }).click();
    await expect(member.getByRole("alert")).toContainText("This account has been disabled");

    // Let back in, he logs in again.
    await admin.locator(`tr[data-user="${max}"]`).getByRole("button", { name: "Enable" }).click();
    await expect(admin.getByRole("status")).toContainText("can log in again");
    await member.locator('input[name="username"]').fill(max);
    await member.locator('input[name="password"]').fill(PASSWORD);
    await member.getByRole("button", { name: "Log in" }).click();
    await expect(member.locator(".conn")).toHaveText("connected");
  } finally {
    await server.dispose();
  }
});

for (const colorScheme of ["light", "dark"] as const) {
  test(`the admin view passes WCAG 2.1 A/AA checks (${colorScheme})`, async ({ browser }) => {
    const server = new OwnServer(port);
    await server.start();
    try {
      const page = await (await browser.newContext({ colorScheme })).newPage();
      await signUp(page, "Ada", server.url);
      await say(page, "something to count");
      for (const path of ["/admin", "/invites"]) {
        await page.goto(`${server.url}${path}`);
        const result = await new AxeBuilder({ page })
          .withTags(["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"])
          .analyze();
        const found = result.violations.map(
          (v) => `${path}: ${v.id} (${v.impact}) on ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`,
        );
        expect(found).toEqual([]);
      }
    } finally {
      await server.dispose();
    }
  });
}
