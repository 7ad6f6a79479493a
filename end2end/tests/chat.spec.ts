import { expect, test } from "@playwright/test";
import { apiPost, message, say, signUp } from "./helpers";

test("two people chat both ways, live", async ({ browser }) => {
  const a = await (await browser.newContext()).newPage();
  const b = await (await browser.newContext()).newPage();
  // The Content-Security-Policy must not block anything the app itself does.
  const violations: string[] = [];
  for (const page of [a, b]) {
    page.on("console", (m) => {
      if (m.type() === "error") violations.push(m.text());
    });
  }
  await signUp(a, "Ann");
  await signUp(b, "Bob");

  const hello = `hello from Ann ${Date.now()}`;
  await say(a, hello);
  await expect(message(b, hello)).toHaveCount(1);
  await expect(message(b, hello).locator(".author")).toHaveText("Ann");
  // Ann's own copy turns from pending to stored.
  await expect(message(a, hello)).toHaveAttribute("data-status", "stored");
  await expect(a.locator("textarea.body")).toHaveValue("");

  const reply = `hi Ann, Bob here ${Date.now()}`;
  await say(b, reply);
  await expect(message(a, reply)).toHaveCount(1);
  await expect(message(a, reply).locator(".author")).toHaveText("Bob");
  expect(violations).toEqual([]);
});

test("Shift+Enter makes a new line, and messages carry the account's name", async ({ page }) => {
  await signUp(page, "Cleo");
  await expect(page.locator("input.name")).toBeHidden();
  await expect(page.locator(".me")).toHaveText("Cleo");
  const box = page.locator("textarea.body");
  await box.fill("line one");
  await box.press("Shift+Enter");
  await box.pressSequentially("line two");
  await expect(box).toHaveValue("line one\nline two");
  await box.press("Enter");
  await expect(message(page, "line one")).toHaveAttribute("data-status", "stored");
  await expect(message(page, "line one").locator(".body")).toHaveText("line one\nline two");
  await expect(message(page, "line one").locator(".author")).toHaveText("Cleo");
  await page.reload();
  await expect(page.locator(".conn")).toHaveText("connected");
  await expect(message(page, "line one").locator(".author")).toHaveText("Cleo");
});

test("a message POSTed over HTTP appears live in the page", async ({ page }) => {
  await signUp(page, "Hook Owner");
  const text = `posted over http ${Date.now()}`;
  await apiPost(page, text, "webhook");
  await expect(message(page, text)).toHaveCount(1);
  // The name comes from the account, not from the payload.
  await expect(message(page, text).locator(".author")).toHaveText("Hook Owner");
});

test("Disconnect then Connect shows what was sent meanwhile", async ({ page }) => {
  await signUp(page);
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page.locator(".conn")).toHaveText("disconnected");
  const missed = [1, 2, 3].map((i) => `while away ${i} ${Date.now()}`);
  for (const text of missed) {
    await apiPost(page, text);
  }
  // Nothing arrives while disconnected.
  await page.waitForTimeout(500);
  await expect(message(page, missed[0])).toHaveCount(0);
  await page.getByRole("button", { name: "Connect" }).click();
  await expect(page.locator(".conn")).toHaveText("connected");
  for (const text of missed) {
    await expect(message(page, text)).toHaveCount(1);
  }
  // In order, each once.
  const bodies = await page.locator("li.msg .body").allTextContents();
  const positions = missed.map((t) => bodies.indexOf(t));
  expect(positions.every((p, i) => p >= 0 && (i === 0 || p > positions[i - 1]))).toBe(true);
});

test("a reload shows the history, rendered by the server", async ({ page, browser }) => {
  await signUp(page, "Dee");
  const text = `remember me ${Date.now()}`;
  await say(page, text);
  await expect(message(page, text)).toHaveAttribute("data-status", "stored");
  await page.reload();
  await expect(message(page, text)).toHaveCount(1);

  // Without JavaScript at all, the forms work and the history is in the HTML.
  const noJs = await browser.newContext({ javaScriptEnabled: false });
  const plain = await noJs.newPage();
  await plain.goto("/");
  await expect(plain).toHaveURL(/\/login$/);
  await plain.goto("/signup");
  await plain.locator('input[name="username"]').fill(`nojs${Date.now()}`);
  await plain.locator('input[name="password"]').fill("correct horse battery");
  await plain.getByRole("button", { name: "Sign up" }).click();
  await expect(message(plain, text)).toHaveCount(1);
  await noJs.close();
});

test("message text is shown as text, never as HTML", async ({ page }) => {
  const dialogs: string[] = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await signUp(page, "Mallory");
  const evil = "<img src=x onerror=alert(1)>";
  await say(page, evil);
  await expect(message(page, evil)).toHaveAttribute("data-status", "stored");
  await expect(message(page, evil).locator(".body")).toHaveText(evil);
  await expect(page.locator("li.msg img")).toHaveCount(0);
  // And after a server render of the same history.
  await page.reload();
  await expect(page.locator(".conn")).toHaveText("connected");
  await expect(message(page, evil).first().locator(".body")).toHaveText(evil);
  await expect(page.locator("li.msg img")).toHaveCount(0);
  expect(dialogs).toEqual([]);
});

test("the list follows new messages, unless the reader scrolled up", async ({ page }) => {
  await page.setViewportSize({ width: 900, height: 500 });
  await signUp(page);
  const tag = Date.now();
  for (let i = 0; i < 30; i++) {
    await apiPost(page, `filler ${tag} ${i}`);
  }
  // At the bottom: the newest message is in view, and no marker.
  await expect(message(page, `filler ${tag} 29`)).toBeInViewport();
  await expect(page.locator(".new-marker")).toHaveCount(0);

  // Scrolled up: new messages do not move the list; a marker counts them.
  await page.locator(".messages").evaluate((el) => el.scrollTo(0, 0));
  await expect(message(page, `filler ${tag} 29`)).not.toBeInViewport();
  await apiPost(page, `late ${tag} 1`);
  await apiPost(page, `late ${tag} 2`);
  await expect(page.locator(".new-marker")).toHaveText("2 new messages ↓");
  await expect(message(page, `late ${tag} 2`)).not.toBeInViewport();

  await page.locator(".new-marker").click();
  await expect(message(page, `late ${tag} 2`)).toBeInViewport();
  await expect(page.locator(".new-marker")).toHaveCount(0);
});
