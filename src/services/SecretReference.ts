/**
 * Secret references: `op://vault/item/[section/]field`, optionally followed by exactly one of
 * `?attribute=otp`, `?attribute=totp` or `?ssh-format=openssh`.
 *
 * Names follow 1Password's documented reference alphabet (letters, digits, `-`, `_`, `.` and
 * spaces); anything else must be addressed by its ID, which uses the same alphabet.
 */
const SEGMENT = /^[A-Za-z0-9_.\- ]+$/
const QUERIES = new Set(["attribute=otp", "attribute=totp", "ssh-format=openssh"])

/** Why a reference is invalid, or undefined when it is valid. */
export const referenceProblem = (reference: string): string | undefined => {
  if (!reference.startsWith("op://")) return "must start with op://"
  const rest = reference.slice("op://".length)
  const queryAt = rest.indexOf("?")
  const path = queryAt === -1 ? rest : rest.slice(0, queryAt)
  if (queryAt !== -1 && !QUERIES.has(rest.slice(queryAt + 1))) {
    return "the only query allowed is ?attribute=otp, ?attribute=totp or ?ssh-format=openssh"
  }
  const segments = path.split("/")
  if (segments.length < 3 || segments.length > 4) return "expected op://vault/item/[section/]field"
  for (const segment of segments) {
    if (segment.trim().length === 0) return "a vault, item, section or field name is empty"
    if (!SEGMENT.test(segment)) return "names may hold only letters, digits, spaces, '-', '_' and '.'"
  }
  return undefined
}

export const isValidReference = (reference: string): boolean => referenceProblem(reference) === undefined
