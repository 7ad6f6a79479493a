import { expect, type Page } from "@playwright/test";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

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

/** A server of a test's own (its first account is the admin), to kill and restart. */
export class OwnServer {
  proc?: ChildProcess;
  readonly dataDir = mkdtempSync(path.join(tmpdir(), "hubbub-e2e-"));
  constructor(
    readonly port: number,
    readonly args: string[] = [],
  ) {}

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const root = path.resolve(__dirname, "../..");
    const bin = path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug/hubbub");
    this.proc = spawn(bin, ["--addr", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, "--log", "warn", ...this.args], {
      cwd: root,
      stdio: "ignore",
    });
    for (let i = 0; i < 200; i++) {
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("server did not start");
  }

  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }

  async dispose() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

