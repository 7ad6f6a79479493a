import { expect, test, type Browser } from "@playwright/test";
import { message, OwnServer, PASSWORD, say, signUp } from "./helpers";

async function twoPages(browser: Browser) {
  const ctxA = await browser.newContext();
  const ctxB = await browser.newContext();
  return { ctxA, a: await ctxA.newPage(), ctxB, b: await ctxB.newPage() };
}

test("a page that was offline gets what it missed, once, with a divider", async ({ browser }) => {
  const { ctxA, a, b } = await twoPages(browser);
  await signUp(a);
  await signUp(b);
  await ctxA.setOffline(true);
  await expect(a.locator(".conn")).toHaveAttribute("data-state", "offline");

  const tag = Date.now();
  const missed = [1, 2, 3].map((i) => `missed while offline ${tag} ${i}`);
  for (const text of missed) {
    await say(b, text);
    await expect(message(b, text)).toHaveAttribute("data-status", "stored");
  }
  await a.waitForTimeout(300);
  await expect(message(a, missed[0])).toHaveCount(0);

  await ctxA.setOffline(false);
  await expect(a.locator(".conn")).toHaveText("connected");
  for (const text of missed) {
    await expect(message(a, text)).toHaveCount(1);
  }
  await expect(a.locator(".divider")).toHaveText("3 new messages");
  await expect(message(a, missed[0]).locator(".divider")).toHaveCount(1);
});

test("messages typed offline survive a reload and are delivered once", async ({ browser }) => {
  const { ctxA, a, b } = await twoPages(browser);
  const olga = await signUp(a, "Offline Olga");
  const outboxKey = `hubbub.outbox.${olga}.general`;
  await signUp(b);
  await ctxA.setOffline(true);
  await expect(a.locator(".conn")).toHaveAttribute("data-state", "offline");

  const tag = Date.now();
  const typed = [`typed offline ${tag} one`, `typed offline ${tag} two`];
  for (const text of typed) {
    await say(a, text);
    await expect(message(a, text)).toHaveAttribute("data-status", "pending");
  }
  expect(await a.evaluate((k) => localStorage.getItem(k), outboxKey)).toContain(typed[1]);
  // Reload while still offline: the browser cannot even load the page. Then leave it entirely,
  // so nothing of the old page is left to send when the network returns.
  await a.reload().catch(() => {});
  await a.close();
  await ctxA.setOffline(false);
  const a2 = await ctxA.newPage();
  await a2.goto("/");
  // The reopened page shows them from its outbox, then sends them.
  for (const text of typed) {
    await expect(message(a2, text)).toHaveCount(1);
  }
  await expect(a2.locator(".conn")).toHaveText("connected");

  for (const text of typed) {
    await expect(message(b, text)).toHaveCount(1);
    await expect(message(b, text).locator(".author")).toHaveText("Offline Olga");
    await expect(message(a2, text)).toHaveCount(1);
    await expect(message(a2, text)).toHaveAttribute("data-status", "stored");
  }
  // Once more after a reload of B: still once each, in the order typed.
  await b.reload();
  const bodies = await b.locator("li.msg .body").allTextContents();
  expect(bodies.filter((t) => t === typed[0])).toHaveLength(1);
  expect(bodies.filter((t) => t === typed[1])).toHaveLength(1);
  expect(bodies.indexOf(typed[0])).toBeLessThan(bodies.indexOf(typed[1]));
  expect(await a2.evaluate((k) => localStorage.getItem(k), outboxKey)).toBeNull();
});

test("a message the server refuses can be discarded", async ({ page }) => {
  await signUp(page);
  // Bypass the textarea's maxlength to send a message the server refuses.
  await page.locator("textarea.body").evaluate((el) => el.removeAttribute("maxlength"));
  await say(page, "x".repeat(4001));
  const failed = page.locator('li.msg[data-status="failed"]');
  await expect(failed).toHaveCount(1);
  await expect(failed.locator(".state")).toContainText("4000");
  await failed.getByRole("button", { name: "Discard" }).click();
  await expect(failed).toHaveCount(0);
  await page.reload();
  await expect(page.locator(".conn")).toHaveText("connected");
  await expect(page.locator('li.msg[data-status="failed"]')).toHaveCount(0);
});

test("after the server is killed and restarted, pages reconnect by themselves", async ({ browser }) => {
  const server = new OwnServer(Number(process.env.HUBBUB_E2E_PORT ?? 3100) + 1);
  await server.start();
  try {
    const { a, b } = await twoPages(browser);
    await signUp(a, "Ann", server.url);
    await signUp(b, "Bob", server.url);
    await say(a, "before the crash");
    await expect(message(b, "before the crash")).toHaveCount(1);
    await expect(message(a, "before the crash")).toHaveAttribute("data-status", "stored");

    await server.kill();
    await expect(a.locator(".conn")).toHaveAttribute("data-state", /reconnecting|connecting/);
    await expect(a.locator(".conn")).toContainText("reconnecting");
    await server.start();
    const restarted = Date.now();

    // Nobody clicks anything.
    await expect(a.locator(".conn")).toHaveText("connected", { timeout: 20_000 });
    await expect(b.locator(".conn")).toHaveText("connected", { timeout: 20_000 });
    console.log(`reconnect: both pages connected ${Date.now() - restarted} ms after the new server answered`);
    await say(b, "after the restart");
    await expect(message(a, "after the restart")).toHaveCount(1);
    for (const page of [a, b]) {
      await page.reload();
      await expect(message(page, "before the crash")).toHaveCount(1);
      await expect(message(page, "after the restart")).toHaveCount(1);
    }
  } finally {
    await server.dispose();
  }
});

async function logIn(page: import("@playwright/test").Page, username: string) {
  await page.goto("/login");
  await page.locator('input[name="username"]').fill(username);
  await page.locator('input[name="password"]').fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page.locator(".conn")).toHaveText("connected");
}

function outboxKeys(page: import("@playwright/test").Page) {
  return page.evaluate(() =>
    Object.keys(localStorage).filter((k) => k.startsWith("hubbub.outbox")),
  );
}

test("on a shared browser an account's unsent messages are never sent as another's", async ({
  browser,
}) => {
  const watcherCtx = await browser.newContext();
  const watcher = await watcherCtx.newPage();
  await signUp(watcher, "Watcher");
  const bobCtx = await browser.newContext();
  const bob = await signUp(await bobCtx.newPage(), "Bob");
  await bobCtx.close();

  // Ann, on the shared browser, types while disconnected and walks away.
  const shared = await browser.newContext();
  const page = await shared.newPage();
  const ann = await signUp(page, "Ann");
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page.locator(".conn")).toHaveAttribute("data-state", "disconnected");
  const tag = Date.now();
  const annDraft = `ann's unsent words ${tag}`;
  await say(page, annDraft);
  await expect(message(page, annDraft)).toHaveAttribute("data-status", "pending");
  expect(await outboxKeys(page)).toEqual([`hubbub.outbox.${ann}.general`]);

  // Bob logs in on the same browser: Ann's outbox is not his, so it stays unsent.
  await logIn(page, bob);
  await expect(page.locator(".me")).toHaveText("Bob");
  await page.waitForTimeout(1000);
  await expect(message(page, annDraft)).toHaveCount(0);
  await expect(message(watcher, annDraft)).toHaveCount(0);

  // Bob's own unsent message is forgotten when he logs out.
  await page.getByRole("button", { name: "Disconnect" }).click();
  const bobDraft = `bob's unsent words ${tag}`;
  await say(page, bobDraft);
  await expect(message(page, bobDraft)).toHaveAttribute("data-status", "pending");
  expect(await outboxKeys(page)).toContain(`hubbub.outbox.${bob}.general`);
  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page).toHaveURL(/\/login/);
  expect(await outboxKeys(page)).not.toContain(`hubbub.outbox.${bob}.general`);
  await logIn(page, bob);
  await page.waitForTimeout(1000);
  await expect(message(page, bobDraft)).toHaveCount(0);
  await expect(message(watcher, bobDraft)).toHaveCount(0);
  await expect(message(watcher, annDraft)).toHaveCount(0);
});
