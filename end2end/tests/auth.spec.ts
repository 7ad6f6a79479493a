import { expect, test } from "@playwright/test";
import http from "node:http";
import { message, PASSWORD, say, signUp } from "./helpers";

const port = Number(process.env.HUBBUB_E2E_PORT ?? 3100);

test("a logged-out visitor is sent to the log-in page", async ({ page }) => {
  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByRole("heading", { name: "Log in" })).toBeVisible();
});

test("sign up, chat, log out (other tabs are closed too), log in again", async ({ browser }) => {
  const ctx = await browser.newContext();
  const a = await ctx.newPage();
  const username = await signUp(a, "Lou");
  const first = `hello from Lou ${Date.now()}`;
  await say(a, first);
  await expect(message(a, first)).toHaveAttribute("data-status", "stored");
  await expect(message(a, first).locator(".author")).toHaveText("Lou");

  const other = await ctx.newPage();
  await other.goto("/");
  await expect(other.locator(".conn")).toHaveText("connected");

  await a.getByRole("button", { name: "Log out" }).click();
  await expect(a).toHaveURL(/\/login$/);
  // The other tab's socket was closed by the server, and the page says so.
  await expect(other.locator(".conn")).toHaveText("signed out");
  await expect(other.getByRole("alert")).toContainText("You were logged out");

  // A wrong password gets the generic answer.
  await a.locator('input[name="username"]').fill(username);
  await a.locator('input[name="password"]').fill("not the password");
  await a.getByRole("button", { name: "Log in" }).click();
  await expect(a.getByRole("alert")).toHaveText("Wrong username or password.");

  await a.locator('input[name="username"]').fill(username);
  await a.locator('input[name="password"]').fill(PASSWORD);
  await a.getByRole("button", { name: "Log in" }).click();
  await expect(a.locator(".conn")).toHaveText("connected");
  const again = `back again ${Date.now()}`;
  await say(a, again);
  await expect(message(a, again)).toHaveAttribute("data-status", "stored");
  await ctx.close();
});

for (const host of ["127.0.0.2", "127.0.0.1"]) {
  test(`a page served from ${host} on another port cannot open a socket with the user's session`, async ({ page }) => {
    await signUp(page);
    const evilPort = port + 10 + (host === "127.0.0.2" ? 0 : 1);
    const evil = http.createServer((_req, res) => {
      res.setHeader("content-type", "text/html");
      res.end(`<!DOCTYPE html><title>elsewhere</title><script>
        window.result = "pending";
        const ws = new WebSocket("ws://127.0.0.1:${port}/ws", "hubbub.v1");
        ws.onopen = () => { window.result = "opened"; };
        ws.onclose = () => { if (window.result !== "opened") window.result = "refused"; };
      </script>`);
    });
    await new Promise<void>((resolve) => evil.listen(evilPort, host, resolve));
    try {
      await page.goto(`http://${host}:${evilPort}/`);
      await expect
        .poll(() => page.evaluate(() => (window as unknown as { result: string }).result))
        .toBe("refused");
      await page.waitForTimeout(300);
      expect(await page.evaluate(() => (window as unknown as { result: string }).result)).toBe("refused");
    } finally {
      evil.close();
    }
  });
}
