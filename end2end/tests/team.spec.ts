import { expect, test, type Browser, type Page } from "@playwright/test";
import { deflateSync } from "node:zlib";
import { message, OwnServer, say, signUp, uniqueName } from "./helpers";

/** Two people in two browsers, both on `general`. */
async function twoPeople(browser: Browser, base = "") {
  const ann = await (await browser.newContext()).newPage();
  const bob = await (await browser.newContext()).newPage();
  const annName = await signUp(ann, "Ann", base);
  const bobName = await signUp(bob, "Bob", base);
  return { ann, bob, annName, bobName };
}

/** Makes a public room and has the other person join it through the browse dialog. */
async function roomOfTwo(owner: Page, other: Page, name: string) {
  await owner.getByRole("button", { name: "Create a room" }).click();
  await owner.getByRole("dialog").getByLabel("Name").fill(name);
  await owner.getByRole("dialog").getByRole("button", { name: "Create" }).click();
  await expect(owner).toHaveURL(new RegExp(`/r/${name}$`));
  await other.getByRole("button", { name: "Browse rooms" }).click();
  await other.getByRole("dialog").locator("li", { hasText: name }).getByRole("button", { name: "Join" }).click();
  await expect(other).toHaveURL(new RegExp(`/r/${name}$`));
}

/** A real PNG of `w`×`h` noise (which does not compress): about 4·w·h bytes. */
function noisePng(w: number, h: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Buffer) => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 6;
  const raw = Buffer.alloc((w * 4 + 1) * h);
  let seed = 12345;
  for (let i = 0; i < raw.length; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    raw[i] = i % (w * 4 + 1) === 0 ? 0 : seed >> 16;
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw, { level: 0 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

test("typing shows below the list and goes; presence goes idle when hidden and offline when closed", async ({
  browser,
}) => {
  const { ann, bob, annName } = await twoPeople(browser);
  const annDot = bob.locator(".members li", { hasText: `@${annName}` }).locator(".dot");
  await bob.getByRole("button", { name: /members/ }).click();
  await expect(annDot).toHaveAttribute("data-status", "active");

  await ann.locator("textarea.body").pressSequentially("hello the");
  await expect(bob.locator(".typing")).toHaveText("Ann is typing…");
  // Cleared: stopped at once.
  await ann.locator("textarea.body").fill("");
  await ann.locator("textarea.body").press("Backspace");
  await expect(bob.locator(".typing")).toHaveText("");
  // Typed again then sent: the message ends it.
  await ann.locator("textarea.body").pressSequentially("there");
  await expect(bob.locator(".typing")).toHaveText("Ann is typing…");
  await ann.locator("textarea.body").press("Enter");
  await expect(message(bob, "there")).toHaveCount(1);
  await expect(bob.locator(".typing")).toHaveText("");

  // Ann's tab is hidden: she is idle; closed: offline, with "last seen" on hover.
  await ann.evaluate(() => {
    Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await expect(annDot).toHaveAttribute("data-status", "idle");
  await ann.close();
  await expect(annDot).toHaveAttribute("data-status", "offline");
  await expect(annDot).toHaveAttribute("title", /last seen/);
});

test("an edit made while the other was offline shows after they reconnect; a reply quotes and jumps", async ({
  browser,
}) => {
  const { ann, bob } = await twoPeople(browser);
  const text = `lunch at noon ${Date.now()}`;
  await say(ann, text);
  await expect(message(bob, text)).toHaveCount(1);

  // Bob goes offline; Ann edits with the hover action.
  await bob.getByRole("button", { name: "Disconnect" }).click();
  await expect(bob.locator(".conn")).toHaveText("disconnected");
  await message(ann, text).hover();
  await message(ann, text).getByRole("button", { name: "Edit" }).click();
  await expect(ann.locator(".composing")).toContainText("Editing");
  const edited = text.replace("noon", "one");
  await ann.locator("textarea.body").fill(edited);
  await ann.locator("textarea.body").press("Enter");
  await expect(message(ann, edited).locator(".edited")).toHaveText("(edited)");
  await bob.getByRole("button", { name: "Connect" }).click();
  await expect(message(bob, edited).locator(".edited")).toHaveText("(edited)");
  await expect(message(bob, text)).toHaveCount(0);

  // Up in an empty composer edits one's last message; Esc leaves it unchanged.
  await ann.locator("textarea.body").focus();
  await ann.locator("textarea.body").press("ArrowUp");
  await expect(ann.locator("textarea.body")).toHaveValue(edited);
  await ann.locator("textarea.body").press("Escape");
  await expect(ann.locator("textarea.body")).toHaveValue("");

  // Bob replies; the quote shows the original, and clicking it marks the original.
  await message(bob, edited).hover();
  await message(bob, edited).getByRole("button", { name: "Reply" }).click();
  await expect(bob.locator(".composing")).toContainText("Replying to Ann");
  await say(bob, "works for me");
  const reply = message(ann, "works for me");
  await expect(reply.locator(".quote")).toContainText(edited);
  await reply.locator(".quote").click();
  await expect(message(ann, edited).first()).toHaveAttribute("data-flash", "");

  // Reactions: one click from the palette, a count both see, a second click takes it back.
  await message(bob, edited).first().hover();
  await message(bob, edited).first().getByRole("button", { name: "React" }).click();
  await message(bob, edited).first().getByRole("group", { name: "Add a reaction" }).getByRole("button").first().click();
  const chip = message(ann, edited).first().locator(".reactions .chip");
  await expect(chip).toHaveText(/👍\s*1/);
  await message(bob, edited).first().locator(".reactions .chip").click();
  await expect(chip).toHaveCount(0);
});

test("a mention raises a badge in the sidebar and is highlighted; search finds it and jumps there", async ({
  browser,
}) => {
  const { ann, bob, bobName } = await twoPeople(browser);
  const room = uniqueName("team");
  await roomOfTwo(ann, bob, room);
  // Bob looks at general while Ann mentions him in the room.
  await bob.locator(".sidebar li.room-item", { hasText: "general" }).getByRole("link").click();
  const word = `zebra${Date.now()}`;
  await say(ann, `@${bobName} can you check the ${word} report?`);
  const item = bob.locator(".sidebar li.room-item", { hasText: room });
  await expect(item.locator(".badge.mention")).toHaveText("@1");
  await item.getByRole("link").click();
  await expect(message(bob, word)).toHaveClass(/mentioned/);
  await expect(item.locator(".badge.mention")).toHaveCount(0);

  // Formatting renders as elements, raw HTML as text.
  await say(ann, "**bold** and `code` and <b>not html</b>");
  const formatted = message(bob, "not html");
  await expect(formatted.locator(".body .b")).toHaveText("bold");
  await expect(formatted.locator(".body code")).toHaveText("code");
  await expect(formatted.locator(".body b")).toHaveCount(0);

  // Many messages later, search finds the mention and opens it in its room.
  for (let i = 0; i < 5; i++) await say(ann, `filler ${i}`);
  await bob.locator(".sidebar li.room-item", { hasText: "general" }).getByRole("link").click();
  await bob.getByRole("button", { name: "Search messages" }).click();
  await bob.getByRole("dialog").getByLabel("Search messages").fill(word);
  const hit = bob.getByRole("dialog").locator(".search-results .hit");
  await expect(hit).toHaveCount(1);
  await expect(hit.locator("mark")).toHaveText(word);
  await hit.click();
  await expect(bob).toHaveURL(new RegExp(`/r/${room}$`));
  await expect(message(bob, word)).toHaveAttribute("data-flash", "");
});

test("a 5 MB image uploads with progress and shows inline for the other; 11 MB is refused; a delete removes it everywhere", async ({
  browser,
}) => {
  const { ann, bob } = await twoPeople(browser);
  const png = noisePng(1150, 1100);
  expect(png.length).toBeGreaterThan(5_000_000);
  // Slow Ann's uploads down so the progress bar can be seen.
  const cdp = await ann.context().newCDPSession(ann);
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: 2 * 1024 * 1024,
  });
  await ann.locator('input[type="file"]').setInputFiles({ name: "noise.png", mimeType: "image/png", buffer: png });
  await expect(ann.locator(".uploads progress")).toBeVisible();
  await expect(ann.locator(".uploads li")).toHaveCount(0, { timeout: 30_000 });
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: -1,
  });
  const img = bob.locator("li.msg img");
  await expect(img).toBeVisible();
  await expect(img).toHaveAttribute("width", "1150");
  await expect(img).toHaveAttribute("height", "1100");
  await expect.poll(() => img.evaluate((el: HTMLImageElement) => el.naturalWidth)).toBe(1150);
  const src = await img.getAttribute("src");

  // Too large: refused in the page, nothing sent.
  await ann.locator('input[type="file"]').setInputFiles({
    name: "huge.bin",
    mimeType: "application/octet-stream",
    buffer: Buffer.alloc(11_000_000),
  });
  await expect(ann.locator("p.error")).toContainText("huge.bin is 11.0 MB; files may be at most 10.0 MB.");

  // Deleted: gone from the list, from search, and from its address.
  await say(ann, "findable words here");
  await expect(message(bob, "findable words")).toHaveCount(1);
  ann.on("dialog", (d) => d.accept());
  for (const text of ["findable words"]) {
    await message(ann, text).hover();
    await message(ann, text).getByRole("button", { name: "Delete" }).click();
    await expect(message(bob, text)).toHaveCount(0);
  }
  const fileRow = ann.locator("li.msg", { has: ann.locator("img") });
  await fileRow.hover();
  await fileRow.getByRole("button", { name: "Delete" }).click();
  await expect(bob.locator("li.msg img")).toHaveCount(0);
  await expect(bob.locator("li.msg .tombstone")).toHaveCount(2);
  const r = await bob.request.get(new URL(src!, bob.url()).toString());
  expect(r.status()).toBe(404);
  const found = await bob.request.get(new URL("/api/search?q=findable", bob.url()).toString());
  expect((await found.json()).hits).toHaveLength(0);
});

test("typing @ offers the room's people: arrows choose, Enter or a click completes the name", async ({ browser }) => {
  const { ann, bobName } = await twoPeople(browser);
  const box = ann.locator("textarea.body");
  await box.fill("");
  // All but the last letter of his handle (the server is shared: others begin the same way).
  await box.pressSequentially(`hey @${bobName.slice(0, -1)}`);
  const offered = ann.getByRole("listbox", { name: "People to mention" });
  await expect(offered.getByRole("option", { name: new RegExp(`@${bobName}`) })).toBeVisible();
  // Ann does not offer herself; Enter takes the chosen name and the message goes on.
  await expect(offered.getByRole("option", { selected: true })).toHaveCount(1);
  await offered.getByRole("option", { name: new RegExp(`@${bobName}`) }).click();
  await expect(offered).toHaveCount(0);
  await expect(box).toHaveValue(`hey @${bobName} `);
  await box.pressSequentially("look");
  await box.press("Enter");
  const sent = message(ann, `hey @${bobName} look`);
  await expect(sent).toHaveAttribute("data-status", "stored");
  // By keyboard, and Esc closes the list without sending.
  await box.pressSequentially(`@${bobName.slice(0, -2)}`);
  await expect(offered).toBeVisible();
  await box.press("Escape");
  await expect(offered).toHaveCount(0);
  await box.pressSequentially(" and @");
  await expect(offered).toBeVisible();
  await box.press("ArrowDown");
  await box.press("Enter");
  await expect(box).toHaveValue(new RegExp(`^@${bobName.slice(0, -2)} and @\\S+ $`));
});

test("a search result pages back is brought into view with what came before and after it", async ({ browser }) => {
  // A server of its own, whose message budget lets a script fill the room quickly.
  const server = new OwnServer(Number(process.env.HUBBUB_E2E_PORT ?? 3100) + 3, ["--message-rate", "10000"]);
  await server.start();
  test.setTimeout(60_000);
  try {
    const { ann, bob } = await twoPeople(browser, server.url);
    const room = uniqueName("deep");
    await roomOfTwo(ann, bob, room);
    const word = `walrus${Date.now()}`;
    await say(ann, `the ${word} plan`);
    await expect(message(ann, word)).toHaveAttribute("data-status", "stored");
    // Several pages later (over the API, to be quick).
    const origin = new URL(ann.url()).origin;
    for (let i = 0; i < 700; i++) {
      const r = await ann.request.post(`${origin}/api/rooms/${room}/messages`, {
        data: { body: `later ${i}` },
        headers: { Origin: origin },
      });
      expect(r.status()).toBe(201);
    }
    await expect(message(bob, "later 699")).toHaveCount(1);
    // A fresh page has only the room's last messages.
    await bob.goto(`${server.url}/`);
    await expect(bob.locator(".conn")).toHaveText("connected");
    await bob.getByRole("button", { name: "Search messages" }).click();
    await bob.getByRole("dialog").getByLabel("Search messages").fill(word);
    await bob.getByRole("dialog").locator(".search-results .hit").click();
    await expect(bob).toHaveURL(new RegExp(`/r/${room}$`));
    await expect(message(bob, word)).toHaveAttribute("data-flash", "");
    await expect(message(bob, "later 0")).toHaveCount(1);
    await expect(message(bob, "later 699")).toHaveCount(1);
  } finally {
    await server.dispose();
  }
});
