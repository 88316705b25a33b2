/**
 * The mapfile: one line per secret, `<username> <secret-reference> <path> [tags]`.
 * Pure domain code: parsing, formatting (the inverse of parsing) and tag selection.
 *
 * Beyond the original tool a field may be double-quoted to hold spaces; inside quotes `\"` and
 * `\\` are escapes. Parsing never throws: a line that cannot be read becomes a `MalformedLine`,
 * and only the caller's own malformed lines are an error (see programs/plan.ts).
 */
export interface MapEntry {
  readonly line: number
  readonly user: string
  readonly reference: string
  readonly path: string
  readonly tags: ReadonlyArray<string>
}

export interface MalformedLine {
  readonly line: number
  /** The first field, when one could be read: decides whose problem the line is. */
  readonly user: string | undefined
  readonly reason: string
}

export interface Mapfile {
  readonly entries: ReadonlyArray<MapEntry>
  readonly malformed: ReadonlyArray<MalformedLine>
}

type Fields = { readonly fields: Array<string> } | { readonly fields: Array<string>; readonly error: string }

const isBlank = (c: string | undefined) => c === " " || c === "\t"

/** Splits one line into fields; an error keeps the fields read so far (the first names the owner). */
const splitFields = (text: string): Fields => {
  const fields: Array<string> = []
  let i = 0
  while (i < text.length) {
    while (isBlank(text[i])) i++
    if (i >= text.length) break
    if (text[i] === "\"") {
      let value = ""
      i++
      // Fast path: a closing quote with no backslash before it ends the field.
      const close = text.indexOf("\"", i)
      const backslash = text.indexOf("\\", i)
      if (close !== -1 && (backslash === -1 || backslash > close)) {
        value = text.slice(i, close)
        i = close
      } else for (;;) {
        const c = text[i]
        if (c === undefined) return { fields, error: "unterminated quoted field" }
        if (c === "\"") break
        if (c === "\\" && (text[i + 1] === "\"" || text[i + 1] === "\\")) {
          value += text[i + 1]
          i += 2
          continue
        }
        value += c
        i++
      }
      i++
      if (i < text.length && !isBlank(text[i])) {
        fields.push(value)
        return { fields, error: "a closing quote must end its field" }
      }
      fields.push(value)
    } else {
      const start = i
      while (i < text.length && !isBlank(text[i])) i++
      fields.push(text.slice(start, i))
    }
  }
  return { fields }
}

/** Tags: comma-separated, trimmed, empty ones dropped, each kept once. */
export const parseTags = (field: string): ReadonlyArray<string> => [
  ...new Set(field.split(",").map((tag) => tag.trim()).filter((tag) => tag.length > 0))
]

const BLANKS = /[ \t]+/

const parseLine = (text: string, line: number): MapEntry | MalformedLine | undefined => {
  let start = 0
  while (isBlank(text[start])) start++
  if (start === text.length || text[start] === "#") return undefined
  // Most lines hold no quote: a native split is much faster than the tokenizer (10,000-line files).
  const split: Fields = text.includes("\"")
    ? splitFields(text)
    : { fields: text.slice(start).split(BLANKS).filter((field) => field.length > 0) }
  const user = split.fields[0]
  if ("error" in split) return { line, user, reason: split.error }
  const [, reference, path, tags] = split.fields
  if (reference === undefined || path === undefined || split.fields.length > 4) {
    return { line, user, reason: `expected 3 or 4 fields, found ${split.fields.length}` }
  }
  if (user === undefined || user.length === 0) return { line, user, reason: "empty username" }
  return { line, user, reference, path, tags: tags === undefined ? [] : parseTags(tags) }
}

const utf8 = new TextDecoder("utf-8", { fatal: true })
const lossy = new TextDecoder("utf-8", { fatal: false })

const splitLines = (text: string): Array<string> => text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l))

/** Decodes the file; lines that are not valid UTF-8 are reported, never guessed at. */
const decodeLines = (bytes: Uint8Array): Array<{ text: string; valid: boolean }> => {
  try {
    return splitLines(utf8.decode(bytes)).map((text) => ({ text, valid: true }))
  } catch {
    const lines: Array<{ text: string; valid: boolean }> = []
    let start = 0
    for (let i = 0; i <= bytes.length; i++) {
      if (i === bytes.length || bytes[i] === 0x0a) {
        const raw = bytes.subarray(start, i)
        let text: string
        let valid = true
        try {
          text = utf8.decode(raw)
        } catch {
          text = lossy.decode(raw)
          valid = false
        }
        lines.push({ text: text.endsWith("\r") ? text.slice(0, -1) : text, valid })
        start = i + 1
      }
    }
    return lines
  }
}

export const parseMapfile = (input: Uint8Array | string): Mapfile => {
  const lines = typeof input === "string"
    ? splitLines(input).map((text) => ({ text, valid: true }))
    : decodeLines(input)
  const entries: Array<MapEntry> = []
  const malformed: Array<MalformedLine> = []
  lines.forEach(({ text, valid }, index) => {
    const line = index + 1
    const parsed = parseLine(text, line)
    if (parsed === undefined) return
    if (!valid) malformed.push({ line, user: "user" in parsed ? parsed.user : undefined, reason: "not valid UTF-8" })
    else if ("reason" in parsed) malformed.push(parsed)
    else entries.push(parsed)
  })
  return { entries, malformed }
}

const needsQuotes = (field: string) => field.length === 0 || /[\s"\\]/.test(field) || field.startsWith("#")

const formatField = (field: string) =>
  needsQuotes(field) ? `"${field.replace(/[\\"]/g, (c) => `\\${c}`)}"` : field

/** Formats one entry so that parseMapfile reads it back unchanged (tags in canonical form). */
export const formatMapEntry = (entry: Pick<MapEntry, "user" | "reference" | "path" | "tags">): string => {
  const fields = [entry.user, entry.reference, entry.path].map(formatField)
  if (entry.tags.length > 0) fields.push(formatField(entry.tags.join(",")))
  return fields.join(" ")
}

export interface TagFilter {
  readonly tags: ReadonlyArray<string>
  readonly untagged: boolean
}

export const noTagFilter: TagFilter = { tags: [], untagged: false }

/**
 * The original tool's semantics: no filter selects everything; `--tags` the entries sharing a tag;
 * `--untagged` alone only untagged entries; both, the matching tagged entries plus untagged ones.
 */
export const matchesTags = (tags: ReadonlyArray<string>, filter: TagFilter): boolean => {
  if (filter.tags.length === 0 && !filter.untagged) return true
  if (tags.length === 0) return filter.untagged
  return tags.some((tag) => filter.tags.includes(tag))
}
