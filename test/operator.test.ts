/**
 * Operator-facing behaviour that needs no root: the mapfile linter, journald-friendly output,
 * plain output for pipes and NO_COLOR, and --quiet.
 */
import { closeSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { spawnSync } from "node:child_process"
import { userInfo } from "node:os"
import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { lintMapfile } from "../src/programs/check.ts"
import { bundle, type Config, repoRoot, runCli, tempDir, writeConfig } from "./fixtures.ts"

const bytes = (text: string) => new TextEncoder().encode(text)
const known = new Set(["alice", "bob"])
const lint = (text: string, onlyUser?: string) => lintMapfile(bytes(text), "/m", { userExists: (name) => known.has(name), onlyUser })

describe("lintMapfile", () => {
  it("reports every kind of error with its line, and warnings for unknown users and lone tags", () => {
    const report = lint([
      "alice op://V/db/password db web,db",
      "alice op://V/api/token api web",
      "alice op://V/db/password ./db db",
      "bob not-a-reference x db",
      "bob op://V/x/y ../escape db",
      "bob \"op://V/x/y",
      "carol op://V/c/d c tpyo",
      "alice op://V/app/signing key /srv/app/signing.key"
    ].join("\n"))
    expect(report.findings.map((f) => [f.severity, f.line, f.message.replace(/:.*/, "")])).toEqual([
      ["error", 3, "writes the same file as line 1 (./db)"],
      ["error", 4, "invalid secret reference \"not-a-reference\""],
      ["error", 5, "invalid path"],
      ["error", 6, "unterminated quoted field"],
      ["warning", 7, "user carol does not exist on this host (lines 7)"],
      ["warning", 7, "tag \"tpyo\" is used by this entry only (a typo?)"],
      ["warning", 8, "tag \"/srv/app/signing.key\" looks like a path"],
      ["warning", 8, "tag \"/srv/app/signing.key\" is used by this entry only (a typo?)"]
    ])
    expect(report).toMatchObject({ entries: 7, users: 3, withheld: 0 })
  })

  it("shows a caller who is not root only their own lines, and counts the rest", () => {
    const report = lint("alice op://V/a/b a\nbob bad x\nbob op://V/x/y ../up\n", "alice")
    expect(report.findings).toEqual([])
    expect(report.withheld).toBe(2)
  })

  it("passes a clean mapfile", () => {
    expect(lint("# comment\nalice op://V/a/b a db\nbob op://V/a/b a db\n").findings).toEqual([])
  })
})

describe("output", () => {
  let dir: ReturnType<typeof tempDir>
  let config: Config
  beforeEach(() => {
    dir = tempDir()
    config = writeConfig(dir.path, `${userInfo().username} op://V/a/b secret\n`, { "op://V/a/b": "s3cret-output-value" })
  })
  afterEach(() => dir[Symbol.dispose]())

  it("prefixes each stderr line with its syslog priority when stderr is the journal stream", () => {
    const log = join(dir.path, "journal")
    const fd = openSync(log, "w")
    try {
      const stat = statSync(log)
      const env = { PATH: process.env.PATH ?? "", JOURNAL_STREAM: `${stat.dev}:${stat.ino}` }
      spawnSync(process.execPath, [bundle, ...config.args, "--tags", "none", "-v"], { env, stdio: ["ignore", "ignore", fd] })
      spawnSync(process.execPath, [bundle, "--map-file-path", join(dir.path, "missing")], { env, stdio: ["ignore", "ignore", fd] })
    } finally {
      closeSync(fd)
    }
    const lines = readFileSync(log, "utf8").trim().split("\n")
    expect(lines.some((l) => l.startsWith("<7>op-secret-manager: debug: "))).toBe(true)
    expect(lines.some((l) => l.startsWith("<4>op-secret-manager: warning: the tag selection matches none"))).toBe(true)
    expect(lines.some((l) => l.startsWith("<3>op-secret-manager: error: mapfile"))).toBe(true)
    expect(lines.every((l) => /^<[3-7]>op-secret-manager: /.test(l))).toBe(true)
  })

  it("has no priority prefixes when JOURNAL_STREAM names another stream", () => {
    const result = runCli(["--map-file-path", join(dir.path, "missing")], { env: { PATH: process.env.PATH ?? "", JOURNAL_STREAM: "1:1" } })
    expect(result.stderr).toMatch(/^op-secret-manager: error: /)
  })

  it("prints help without colour codes when stdout is not a terminal", () => {
    const result = runCli(["--help"])
    expect(result.status).toBe(0)
    expect(result.stdout).toContain("--secrets-dir")
    expect(result.stdout).not.toMatch(/\x1b\[/)
  })

  it("--quiet prints nothing on success, but still warns", () => {
    const ok = runCli([...config.args, "--quiet"])
    expect(ok.status).toBe(0)
    expect(ok.stdout + ok.stderr).toBe("")
    const warned = runCli([...config.args, "-q", "--tags", "none"])
    expect(warned.stdout).toBe("")
    expect(warned.stderr).toMatch(/warning: the tag selection matches none/)
  })

  it("check exits 65 on errors and 0 on a clean mapfile, as a user checking their own file", () => {
    const clean = runCli(["check", "--map-file-path", config.mapfile])
    expect(clean.status).toBe(0)
    expect(clean.stdout).toMatch(/1 entries for 1 users; 0 errors, 0 warnings/)
    const broken = join(dir.path, "broken")
    writeFileSync(broken, `${userInfo().username} op://V/a/b ../x\n`)
    const failed = runCli(["check", "--map-file-path", broken, "--json"])
    expect(failed.status).toBe(65)
    expect(JSON.parse(failed.stdout)).toMatchObject({ ok: false, findings: [{ severity: "error", line: 1 }] })
  })
})

describe("README", () => {
  it("shows a mapfile example that parses cleanly", () => {
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8")
    const section = readme.slice(readme.indexOf("## The mapfile"))
    const example = section.slice(section.indexOf("```\n") + 4, section.indexOf("\n```", section.indexOf("```\n") + 4))
    const report = lint(example)
    expect(report.entries).toBeGreaterThanOrEqual(4)
    // A short example uses each tag once and names users this host lacks; nothing else may be wrong.
    expect(report.findings.filter((f) => f.severity === "error" || f.message.includes("looks like a path"))).toEqual([])
  })
})
