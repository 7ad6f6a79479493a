import { expect, type Page } from "@playwright/test";

export const PASSWORD = "correct horse battery";

/** A username no other test uses. */
export function uniqueName(prefix = "u") {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
}

/** Signs up through the server-rendered form and waits for the connected chat. */
export async function signUp(page: Page, display?: string, base = "") {
  const username = uniqueName();
  await page.goto(`${base}/signup`);
  await page.locator('input[name="username"]').fill(username);
  if (display) await page.locator('input[name="display_name"]').fill(display);
  await page.locator('input[name="password"]').fill(PASSWORD);
  await page.getByRole("button", { name: "Sign up" }).click();
  await expect(page.locator(".conn")).toHaveText("connected");
  return username;
}

export async function say(page: Page, text: string) {
  await page.locator("textarea.body").fill(text);
  await page.locator("textarea.body").press("Enter");
}

export function message(page: Page, text: string) {
  return page.locator("li.msg", { hasText: text });
}

/** Posts over the HTTP API with the page's session, as a script on the page's origin would. */
export async function apiPost(page: Page, body: string, user?: string) {
  const origin = new URL(page.url()).origin;
  const r = await page.request.post(`${origin}/api/rooms/general/messages`, {
    data: { body, user },
    headers: { Origin: origin },
  });
  expect(r.status()).toBe(201);
}
