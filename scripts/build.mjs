// Bundles the CLI into dist/op-secret-manager.js with esbuild, plus koffi's addon beside it.
// OSM_SYSCONFDIR bakes the configuration directory into the bundle (default /etc/op-secret-manager).
import { build } from "esbuild"
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const require = createRequire(import.meta.url)

export const buildBundle = async ({
  sysconfdir = "/etc/op-secret-manager",
  outdir = join(root, "dist"),
  entry = join(root, "src/main.ts")
} = {}) => {
  if (!sysconfdir.startsWith("/")) throw new Error(`OSM_SYSCONFDIR must be absolute, got ${sysconfdir}`)
  const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"))
  mkdirSync(outdir, { recursive: true })
  const outfile = join(outdir, "op-secret-manager.js")
  await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    // The SDK stays a package: its WASM is read relative to its own file.
    external: ["@1password/sdk"],
    banner: { js: "import { createRequire as __osmCreateRequire } from 'node:module';\nconst require = __osmCreateRequire(import.meta.url);" },
    define: {
      __OSM_BUNDLED__: "true",
      __OSM_SYSCONFDIR__: JSON.stringify(sysconfdir),
      __OSM_VERSION__: JSON.stringify(version)
    },
    legalComments: "none",
    logLevel: "warning"
  })
  copyFileSync(require.resolve("@koromix/koffi-linux-x64/linux_x64/koffi.node"), join(outdir, "koffi.node"))
  // The bundle is an ES module: say so for any copy of the output directory, wherever it lands.
  writeFileSync(join(outdir, "package.json"), '{ "type": "module" }\n')
  return outfile
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const outfile = await buildBundle({ sysconfdir: process.env.OSM_SYSCONFDIR || undefined })
  console.log(`built ${outfile}`)
}
