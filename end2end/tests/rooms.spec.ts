import { expect, test, type Page } from "@playwright/test";
import { message, say, signUp, uniqueName } from "./helpers";

/** The sidebar entry of a room. */
function roomItem(page: Page, title: string) {
  return page.locator(".sidebar li.room-item", { hasText: title });
}

/** Makes a room through the "+" dialog and waits for it to open. */
async function createRoom(page: Page, name: string, opts: { private?: boolean; topic?: string } = {}) {
  await page.getByRole("button", { name: "Create a room" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.getByLabel("Name").fill(name);
  if (opts.topic) await dialog.getByLabel("Topic").fill(opts.topic);
  if (opts.private) await dialog.getByRole("checkbox").check();
  await dialog.getByRole("button", { name: "Create" }).click();
  await expect(page).toHaveURL(new RegExp(`/r/${name}$`));
  await expect(page.locator("h1.room")).toContainText(name);
}

test("two people: a private room, an invitation, unread badges and the title count, read in another tab", async ({
  browser,
}) => {
  const ctxA = await browser.newContext();
  const ctxB = await browser.newContext();
  const ann = await ctxA.newPage();
  const bob = await ctxB.newPage();
  await signUp(ann, "Ann");
  const bobName = await signUp(bob, "Bob");
  const room = uniqueName("plans");

  await createRoom(ann, room, { private: true, topic: "the launch" });
  await expect(ann.locator(".bar .topic")).toHaveText("the launch");
  // Bob cannot see it before he is added.
  await expect(roomItem(bob, room)).toHaveCount(0);

  await ann.getByRole("button", { name: "1 member" }).click();
  await ann.getByLabel("Add someone").fill(bobName);
  await ann.getByRole("button", { name: "Add", exact: true }).click();
  await expect(ann.locator(".members li", { hasText: `@${bobName}` })).toHaveCount(1);
  await expect(ann.getByRole("button", { name: "2 members" })).toBeVisible();
  // Bob's open page learns of it at once, without a reload.
  await expect(roomItem(bob, room)).toHaveCount(1);
  await expect(bob).toHaveTitle("hubbub");

  // A second tab of Bob's, on another page of the chat.
  const bob2 = await ctxB.newPage();
  await bob2.goto("/");
  await expect(bob2.locator(".conn")).toHaveText("connected");

  const hello = `the launch is on friday ${Date.now()}`;
  await say(ann, hello);
  await expect(message(ann, hello)).toHaveAttribute("data-status", "stored");
  for (const page of [bob, bob2]) {
    await expect(roomItem(page, room).locator(".badge")).toHaveText("1");
    await expect(roomItem(page, room)).toHaveClass(/unread/);
    await expect(page).toHaveTitle("(1) hubbub");
  }

  // Reading it in one tab clears it in the other.
  await roomItem(bob, room).getByRole("link").click();
  await expect(bob).toHaveURL(new RegExp(`/r/${room}$`));
  await expect(message(bob, hello)).toHaveCount(1);
  await expect(bob.locator(".divider")).toHaveText("1 new message");
  await expect(roomItem(bob, room).locator(".badge")).toHaveCount(0);
  await expect(bob).toHaveTitle("hubbub");
  await expect(roomItem(bob2, room).locator(".badge")).toHaveCount(0);
  await expect(bob2).toHaveTitle("hubbub");

  const reply = `see you there ${Date.now()}`;
  await say(bob, reply);
  await expect(message(ann, reply)).toHaveCount(1);
  await expect(message(ann, reply).locator(".handle")).toHaveText(`@${bobName}`);
  // Her own message never counted as unread to her.
  await expect(ann).toHaveTitle("hubbub");
});

test("moving between five rooms keeps one WebSocket; back and forward work; drafts stay", async ({ page }) => {
  const sockets: string[] = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await signUp(page, "Nav");
  const rooms = [1, 2, 3, 4].map((i) => uniqueName(`r${i}-`));
  for (const r of rooms) {
    await createRoom(page, r);
  }
  // general, then the four rooms, then back through them.
  await roomItem(page, "general").getByRole("link").click();
  await expect(page.locator("h1.room")).toHaveText("# general");
  for (const r of rooms) {
    await roomItem(page, r).getByRole("link").click();
    await expect(page.locator("h1.room")).toHaveText(`# ${r}`);
    await say(page, `in ${r}`);
    await expect(message(page, `in ${r}`)).toHaveAttribute("data-status", "stored");
  }
  await page.locator("textarea.body").fill("half a thought");
  await roomItem(page, rooms[0]).getByRole("link").click();
  await expect(page.locator("textarea.body")).toHaveValue("");
  await expect(message(page, `in ${rooms[0]}`)).toHaveCount(1);
  await page.goBack();
  await expect(page).toHaveURL(new RegExp(`/r/${rooms[3]}$`));
  await expect(page.locator("textarea.body")).toHaveValue("half a thought");
  await page.goBack();
  await expect(page.locator("h1.room")).toHaveText(`# ${rooms[2]}`);
  await expect(message(page, `in ${rooms[2]}`)).toHaveCount(1);
  await page.goForward();
  await expect(page.locator("h1.room")).toHaveText(`# ${rooms[3]}`);
  // Alt+Up moves to the previous room of the sidebar.
  await page.keyboard.press("Alt+ArrowUp");
  await expect(page.locator("h1.room")).toHaveText(`# ${rooms[2]}`);
  expect(sockets.length).toBe(1);
});

test("direct messages open from the dialog and are the same conversation twice", async ({ browser }) => {
  const a = await (await browser.newContext()).newPage();
  const b = await (await browser.newContext()).newPage();
  await signUp(a, "Dee");
  const bobName = await signUp(b, "Eli");
  for (let i = 0; i < 2; i++) {
    await a.getByRole("button", { name: "New message" }).click();
    await a.getByRole("dialog").getByLabel("To").fill(bobName);
    await a.getByRole("dialog").getByRole("button", { name: "Open" }).click();
    await expect(a.locator("h1.room")).toContainText("Eli");
  }
  await expect(a.locator(".sidebar .dms li")).toHaveCount(1);
  // A person's name in a member list opens the same conversation.
  await roomItem(a, "general").getByRole("link").click();
  await a.locator(".members-toggle").click();
  await a.getByTitle(`Message @${bobName}`).click();
  await expect(a.locator("h1.room")).toContainText("Eli");
  await expect(a.locator(".sidebar .dms li")).toHaveCount(1);
  const text = `just us ${Date.now()}`;
  await say(a, text);
  await expect(b.locator(".sidebar .dms li .badge")).toHaveText("1");
  await b.locator(".sidebar .dms li a").click();
  await expect(message(b, text)).toHaveCount(1);
});

test("Ctrl+K switches rooms and Esc closes the dialog; browse and join a public room", async ({ browser }) => {
  const owner = await (await browser.newContext()).newPage();
  const other = await (await browser.newContext()).newPage();
  await signUp(owner, "Owner");
  const room = uniqueName("open");
  await createRoom(owner, room, { topic: "all welcome" });
  await signUp(other, "Visitor");
  await other.getByRole("button", { name: "Browse rooms" }).click();
  const row = other.getByRole("dialog").locator("li", { hasText: room });
  await expect(row).toContainText("all welcome");
  await row.getByRole("button", { name: "Join" }).click();
  await expect(other).toHaveURL(new RegExp(`/r/${room}$`));
  await expect(roomItem(other, room)).toHaveCount(1);

  await other.keyboard.press("Control+k");
  await expect(other.getByRole("dialog")).toBeVisible();
  await other.keyboard.press("Escape");
  await expect(other.getByRole("dialog")).toHaveCount(0);
  await other.keyboard.press("Control+k");
  await other.getByRole("dialog").getByLabel("Room or person").fill("gener");
  await other.keyboard.press("Enter");
  await expect(other.locator("h1.room")).toHaveText("# general");
});

test("on a phone the sidebar is a drawer and the header keeps log-out in view", async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 800 });
  await signUp(page, "Pat");
  await expect(page.locator(".sidebar")).not.toBeInViewport();
  await expect(page.getByRole("button", { name: "Log out" })).toBeInViewport();
  await page.getByRole("button", { name: "Room list" }).click();
  await expect(page.locator(".sidebar")).toBeInViewport();
  await roomItem(page, "general").getByRole("link").click();
  await expect(page.locator(".sidebar")).not.toBeInViewport();
  const box = await page.locator(".bar").boundingBox();
  expect(box!.width).toBeLessThanOrEqual(390);
});
