/** Constants that the build bakes in (scripts/build.mjs); the fallbacks serve tests run from source. */
declare const __OSM_SYSCONFDIR__: string | undefined
declare const __OSM_VERSION__: string | undefined

export const sysconfdir: string = typeof __OSM_SYSCONFDIR__ === "string" ? __OSM_SYSCONFDIR__ : "/etc/op-secret-manager"
export const version: string = typeof __OSM_VERSION__ === "string" ? __OSM_VERSION__ : "0.0.0-dev"

export const defaultApiKeyPath = `${sysconfdir}/api`
export const defaultMapFilePath = `${sysconfdir}/mapfile`
