/**
 * How lines reach people and logs. When stderr is the journal (systemd sets JOURNAL_STREAM to the
 * device:inode of the stream it connected), each line starts with its syslog priority (<3> error,
 * <4> warning, <6> info, <7> debug) so that `journalctl -p` filters work, and there is no colour.
 * ANSI escapes (only @effect/cli's help uses them) are removed unless stdout is a terminal and
 * NO_COLOR is unset.
 */
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import type * as LogLevel from "effect/LogLevel"
import * as fs from "node:fs"

export type Priority = "error" | "warning" | "info" | "debug"

const SYSLOG: Record<Priority, number> = { error: 3, warning: 4, info: 6, debug: 7 }

/** True when fd 2 is the stream systemd's journal handed us. */
export const stderrIsJournal = (env: NodeJS.ProcessEnv = process.env): boolean => {
  const stream = env.JOURNAL_STREAM
  if (stream === undefined) return false
  const [device, inode] = stream.split(":")
  try {
    const stat = fs.fstatSync(2, { bigint: true })
    return device !== undefined && inode !== undefined && stat.dev === BigInt(device) && stat.ino === BigInt(inode)
  } catch {
    return false
  }
}

export const colourAllowed = (env: NodeJS.ProcessEnv = process.env): boolean =>
  process.stdout.isTTY === true && env.NO_COLOR === undefined

/** One stderr line: `op-secret-manager: warning: ...`, with the syslog prefix for the journal. */
export const formatLine = (priority: Priority, text: string, journal: boolean): string => {
  const label = priority === "info" ? "" : `${priority}: `
  const line = `op-secret-manager: ${label}${text.replace(/\s*\n\s*/g, " ")}`
  return journal ? `<${SYSLOG[priority]}>${line}\n` : `${line}\n`
}

const priorityOf = (level: LogLevel.LogLevel): Priority => {
  switch (level._tag) {
    case "Fatal":
    case "Error":
      return "error"
    case "Warning":
      return "warning"
    case "Info":
      return "info"
    default:
      return "debug"
  }
}

/** The logger main.ts installs: one plain line per message on stderr. */
export const stderrLogger = (journal: boolean) =>
  Logger.make(({ logLevel, message }) => {
    const text = (Array.isArray(message) ? message : [message]).map(String).join(" ")
    process.stderr.write(formatLine(priorityOf(logLevel), text, journal))
  })

const ANSI = /\x1b\[[0-9;]*m/g

/** Console.log without colour codes, for pipes, files, the journal and NO_COLOR. */
export const plainConsole = Effect.map(Console.consoleWith(Effect.succeed), (console): Console.Console => ({
  ...console,
  log: (...args) => console.log(...args.map((arg) => (typeof arg === "string" ? arg.replace(ANSI, "") : arg)))
}))
