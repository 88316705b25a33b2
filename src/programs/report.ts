/**
 * What a run did, as data (for --json) and as lines for people. Paths, references and line
 * numbers only: a report never holds a secret value.
 */
export type FileStatus = "written" | "unchanged" | "removed" | "absent" | "skipped" | "failed"

export interface FileReport {
  readonly path: string
  readonly reference: string
  readonly line: number
  readonly status: FileStatus
  readonly reason?: string
}

export interface RunReport {
  readonly command: "fetch" | "cleanup"
  readonly user: string
  readonly files: ReadonlyArray<FileReport>
  readonly warnings: ReadonlyArray<string>
}

/** Lines for stdout; the first two keep the original tool's wording, which scripts may grep for. */
export const humanLines = (report: RunReport, verbose: boolean): Array<string> => {
  const lines: Array<string> = []
  for (const file of report.files) {
    switch (file.status) {
      case "written":
        lines.push(`Successfully wrote secret to ${file.path}`)
        break
      case "unchanged":
        lines.push(`Secret already up to date at ${file.path}`)
        break
      case "removed":
        lines.push(`Removed ${file.path}`)
        break
      case "absent":
        if (verbose) lines.push(`File does not exist, skipping: ${file.path}`)
        break
      default:
        break
    }
  }
  if (report.command === "cleanup") lines.push("Cleanup completed successfully")
  return lines
}
