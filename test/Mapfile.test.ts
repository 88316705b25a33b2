import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { formatMapEntry, type MapEntry, matchesTags, parseMapfile, parseTags, type TagFilter } from "../src/services/Mapfile.ts"

const bytes = (text: string) => new TextEncoder().encode(text)

describe("parseMapfile", () => {
  it("reads users, references, paths and tags; skips comments and blank lines; tolerates CRLF", () => {
    const { entries, malformed } = parseMapfile(bytes([
      "# a comment",
      "   # an indented comment",
      "",
      "alice op://Vault/db/password db_password",
      "alice\top://Vault/api/token\t/etc/app/token\tweb,api,,web\r",
      "   ",
      "bob op://Vault/db/password db_password db"
    ].join("\n")))
    expect(malformed).toEqual([])
    expect(entries).toEqual([
      { line: 4, user: "alice", reference: "op://Vault/db/password", path: "db_password", tags: [] },
      { line: 5, user: "alice", reference: "op://Vault/api/token", path: "/etc/app/token", tags: ["web", "api"] },
      { line: 7, user: "bob", reference: "op://Vault/db/password", path: "db_password", tags: ["db"] }
    ])
  })

  it("reads double-quoted fields with spaces and the \\\" and \\\\ escapes", () => {
    const { entries } = parseMapfile(bytes(`alice "op://Prod Vault/My DB/password" "dir with space/a \\"quoted\\" \\\\ name" "a tag, b"`))
    expect(entries).toEqual([{
      line: 1,
      user: "alice",
      reference: "op://Prod Vault/My DB/password",
      path: "dir with space/a \"quoted\" \\ name",
      tags: ["a tag", "b"]
    }])
  })

  it("reports malformed lines with their number and first field", () => {
    const { entries, malformed } = parseMapfile(bytes([
      "alice op://V/i/f",
      "bob op://V/i/f path tags extra",
      "carol \"op://V/i/f path",
      "dave \"op://V/i/f\"x path"
    ].join("\n")))
    expect(entries).toEqual([])
    expect(malformed).toEqual([
      { line: 1, user: "alice", reason: "expected 3 or 4 fields, found 2" },
      { line: 2, user: "bob", reason: "expected 3 or 4 fields, found 5" },
      { line: 3, user: "carol", reason: "unterminated quoted field" },
      { line: 4, user: "dave", reason: "a closing quote must end its field" }
    ])
  })

  it("never throws on invalid UTF-8 and reports only the lines that hold it", () => {
    const input = new Uint8Array([
      ...bytes("alice op://V/i/f ok\n"),
      ...bytes("bob op://V/i/f "), 0xff, 0xfe, ...bytes("\n"),
      0xc3, ...bytes(" op://V/i/f x\n")
    ])
    const { entries, malformed } = parseMapfile(input)
    expect(entries.map((e) => e.line)).toEqual([1])
    expect(malformed.map((m) => [m.line, m.user, m.reason])).toEqual([
      [2, "bob", "not valid UTF-8"],
      [3, "\ufffd", "not valid UTF-8"]
    ])
  })

  it.prop("never throws on arbitrary bytes", [FastCheck.uint8Array({ maxLength: 400 })], ([input]) => {
    const { entries, malformed } = parseMapfile(input)
    for (const entry of entries) expect(entry.user.length).toBeGreaterThan(0)
    expect(entries.length + malformed.length).toBeLessThanOrEqual(input.filter((b) => b === 0x0a).length + 1)
  })
})

// Fields as 1Password names and paths can really be: any printable text without line breaks.
const field = FastCheck.string({ minLength: 1, maxLength: 12, unit: FastCheck.constantFrom("a", "Z", "0", " ", "\t", "\"", "\\", "#", "/", ".", "-", "é", ",") })
  .filter((s) => s.trim().length > 0)
const tag = FastCheck.string({ minLength: 1, maxLength: 6, unit: FastCheck.constantFrom("a", "b", "x", "-", " ", "\"") })
  .map((s) => s.trim()).filter((s) => s.length > 0 && !s.includes(","))
const entry = FastCheck.record({
  user: field.filter((s) => !/^[ \t]*#/.test(s)),
  reference: field,
  path: field,
  tags: FastCheck.uniqueArray(tag, { maxLength: 3 })
})

describe("formatMapEntry", () => {
  it.prop("is read back unchanged by parseMapfile", [FastCheck.array(entry, { maxLength: 8 })], ([written]) => {
    const text = written.map(formatMapEntry).join("\n")
    const { entries, malformed } = parseMapfile(bytes(text))
    expect(malformed).toEqual([])
    expect(entries.map(({ user, reference, path, tags }) => ({ user, reference, path, tags }))).toEqual(written)
  })
})

describe("parseTags", () => {
  it("splits on commas, trims, drops empty tags and repeats", () => {
    expect(parseTags(" web, db ,,web,")).toEqual(["web", "db"])
    expect(parseTags(",")).toEqual([])
  })
})

/** The original tool's rule, written the slow and obvious way. */
const referenceModel = (tags: ReadonlyArray<string>, filter: TagFilter): boolean => {
  const noFilter = filter.tags.length === 0 && !filter.untagged
  if (noFilter) return true
  const untaggedSelected = filter.untagged && tags.length === 0
  const sharesTag = tags.some((t) => filter.tags.some((f) => f === t))
  return untaggedSelected || sharesTag
}

describe("matchesTags", () => {
  const tags = FastCheck.uniqueArray(FastCheck.constantFrom("web", "db", "ops", "Web"), { maxLength: 3 })

  it.prop("agrees with the reference model", [tags, tags, FastCheck.boolean()], ([entryTags, filterTags, untagged]) => {
    expect(matchesTags(entryTags, { tags: filterTags, untagged })).toBe(referenceModel(entryTags, { tags: filterTags, untagged }))
  })

  it("follows the original's four cases", () => {
    const entries: Array<Pick<MapEntry, "tags">> = [{ tags: [] }, { tags: ["web"] }, { tags: ["db", "ops"] }]
    const select = (filter: TagFilter) => entries.filter((e) => matchesTags(e.tags, filter)).map((e) => e.tags.join(","))
    expect(select({ tags: [], untagged: false })).toEqual(["", "web", "db,ops"])
    expect(select({ tags: ["ops"], untagged: false })).toEqual(["db,ops"])
    expect(select({ tags: [], untagged: true })).toEqual([""])
    expect(select({ tags: ["web"], untagged: true })).toEqual(["", "web"])
    expect(select({ tags: ["WEB"], untagged: false })).toEqual([])
  })
})
