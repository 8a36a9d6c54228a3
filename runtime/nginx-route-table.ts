/**
 * Stage 1's live route table, rendered into the org server's configuration
 * (runtime/nginx-config.ts, whose header gives the design): a
 * `lua_shared_dict` org id → `host:port`, loaded from every route file when
 * nginx starts with an empty zone, then kept by the allocator's loads of the
 * files it writes; and the status server's Lua handlers (`demiurge.lookup`,
 * `demiurge.load`). Lua (LuaJIT 2.1, lua-nginx-module 0.10 with
 * lua-resty-core, Debian 12); the code is static, only the locals at the top
 * of the init block depend on the configuration.
 */

/** The shared-memory route table. Fixed on purpose: a zone whose size changes is new (empty) at that reload. */
export const ROUTES_DICT = 'demiurge_routes';
export const ROUTES_DICT_SIZE = '32m';

export interface RouteTableOptions {
  /** The environment's domain (org names end in `.<domain>`). */
  domain: string;
  /** `<confDir>/routes`, without the trailing slash. */
  routesDir: string;
  /** Base configuration version the status server reports. */
  version: string;
  /** Flat names: the org id may come as naming.compactId. */
  flat: boolean;
  /** Per-org certificate bundles: the status server also reports which the workers can read. */
  certDir?: string;
  certPath: string;
  keyPath: string;
}

/** A Lua pattern of a lowercase UUID (Lua patterns have no `{n}`). */
export const LUA_UUID = [8, 4, 4, 4, 12].map((n) => '[0-9a-f]'.repeat(n)).join('%-');

/** A Lua string literal (paths and versions: no control characters). */
function luaString(s: string): string {
  return JSON.stringify(s);
}

/** Reading route files and answering the status server. */
const LUA_HELPERS = `
    local function is_id(s)
        return #s == 36 and s:find(ID) ~= nil
    end

    -- The gateway (host:port) an org's route file names, nil when there is no file (or it is not the org's).
    local function read_route(id)
        local f = io.open(ROUTES .. "org-" .. id .. ".conf", "r")
        if not f then
            return nil
        end
        local text = "\\n" .. (f:read("*a") or "")
        f:close()
        local at = text:find("\\n" .. id .. ' "', 1, true)
        return at and text:match('^([%w%.%-_:%[%]]+)";', at + #id + 3) or nil
    end

    local function json_str(s)
        return '"' .. (s:gsub('[%c"\\\\]', function(ch) return string.format("\\\\u%04x", ch:byte()) end)) .. '"'
    end

    local function readable(file)
        local f = io.open(file, "r")
        if f then
            f:close()
            return true
        end
        return false
    end

    local function ids_of(arg)
        local ids = {}
        for id in (arg or ""):gmatch("[^,]+") do
            if is_id(id) then
                ids[#ids + 1] = id
            end
        end
        return ids
    end

    -- What the table holds for each id: what every worker routes it to right now (and, with per-org
    -- certificates, whether the answering worker can read each org's bundle and the base certificate).
    local function answer(ids)
        local r, c = {}, {}
        for _, id in ipairs(ids) do
            r[#r + 1] = json_str(id) .. ":" .. json_str(routes:get(id) or "")
            if CERTS then
                c[#c + 1] = json_str(id) .. ":" .. tostring(readable(CERTS .. "org-" .. id .. ".pem"))
            end
        end
        local out = '{"version":' .. json_str(VERSION) .. ',"routes":{' .. table.concat(r, ",") .. "}"
        if CERTS then
            out = out .. ',"certs":{' .. table.concat(c, ",") .. '},"base":' .. tostring(readable(BASE_CERT) and readable(BASE_KEY)) .. ',"pid":' .. ngx.worker.pid()
        end
        return out .. "}"
    end
`;

/** The per-request lookup, then the status server's handlers. */
const LUA_HANDLERS = `
    -- The org location's route, once per request (set_by_lua_block, routeLookupDirective): the gateway
    -- (host:port) of the organization whose name $host is, "" when there is none. An organization's names
    -- are org-<uuid>.<domain> and *.org-<uuid>.<domain> (what its DNS records cover), and with flat names
    -- also <name>--org-<uuid or compact id>.<domain>: the id sits at a fixed place before the domain, so it
    -- is cut out here instead of by the map's regex (measured, user-space instructions per request over
    -- the static proxy: the map + this lookup ≈ 9,400, this alone ≈ 6,500, of which ≈ 3,200 are
    -- proxy_pass with a variable; bench/routing-probe.ts --instructions, docs/bench.md, row 5). The table's keys are org ids only, so any other 36 characters
    -- miss. $host is lowercase and has no port (nginx). A function of this block, its locals upvalues,
    -- because LuaJIT compiles it: the same code inline in the set_by_lua chunk is never compiled (its
    -- ngx.var read aborts every trace, "NYI: return to lower frame") and runs interpreted.
    local var, get, sub, byte, find = ngx.var, routes.get, string.sub, string.byte, string.find
    local SUFFIX = "." .. DOMAIN
    local S = #SUFFIX
    function demiurge.route()
        local h = var.host
        local last = #h - S
        if last < 33 or not find(h, SUFFIX, last + 1, true) then
            return ""
        end
        local at = last - 36 -- the "-" of "org-"
        if at >= 4 and sub(h, at - 3, at) == "org-" and (at == 4 or (at > 5 and byte(h, at - 4) == 46) or (FLAT and at > 6 and sub(h, at - 5, at - 4) == "--")) then
            return get(routes, sub(h, at + 1, last)) or ""
        end
        at = last - 26
        if FLAT and at > 6 and sub(h, at - 5, at) == "--org-" then
            local compact = sub(h, at + 1, last)
            if find(compact, "^[a-z2-7]+$") then
                return get(routes, demiurge.uuid_of(compact)) or ""
            end
        end
        return ""
    end

    -- GET /__demiurge/routes?ids=a,b: the table's entries.
    function demiurge.lookup()
        ngx.header["Content-Type"] = "application/json"
        ngx.print(answer(ids_of(ngx.var.arg_ids)))
    end

    -- POST /__demiurge/routes/load?ids=a,b: (re)load exactly these orgs' route files into the table (an
    -- absent file removes the entry), then answer what it holds. Loads are serialized across workers by
    -- a lock entry (it expires by itself after 5 s should a worker die holding it), so a load's read of
    -- a file and its write of the entry are never interleaved with another load's.
    function demiurge.load()
        if ngx.req.get_method() ~= "POST" then
            return ngx.exit(405)
        end
        local ids = ids_of(ngx.var.arg_ids)
        if not wait_loaded() then
            return ngx.exit(503)
        end
        local waited = 0
        while not routes:add(LOCK, ngx.worker.pid(), 5) do
            if waited > 5 then
                return ngx.exit(503)
            end
            ngx.sleep(0.001)
            waited = waited + 0.001
        end
        local failed
        for _, id in ipairs(ids) do
            local target = read_route(id)
            if target then
                -- safe_set: a full table answers an error instead of evicting another org's route.
                local ok, err = routes:safe_set(id, target)
                if not ok then
                    failed = id .. ": " .. tostring(err)
                end
            else
                routes:delete(id)
            end
        end
        routes:delete(LOCK)
        if failed then
            ngx.log(ngx.ERR, "demiurge: route table ${ROUTES_DICT} (${ROUTES_DICT_SIZE}) cannot hold ", failed)
            return ngx.exit(507)
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.print(answer(ids))
    end
`;

/** Flat names' compact org id, decoded as the njs decoder and naming.uuidOfCompactId do. */
const LUA_COMPACT_DECODER = `
    -- Flat names carry the org id as naming.compactId (26 base32 characters; the map has checked them).
    local B32 = "abcdefghijklmnopqrstuvwxyz234567"
    function demiurge.uuid_of(token)
        local hex, acc, bits = {}, 0, 0
        for i = 1, #token do
            acc = bit.bor(bit.lshift(acc, 5), B32:find(token:sub(i, i), 1, true) - 1)
            bits = bits + 5
            if bits >= 8 then
                hex[#hex + 1] = string.format("%02x", bit.band(bit.rshift(acc, bits - 8), 255))
                bits = bits - 8
                acc = bit.band(acc, bit.lshift(1, bits) - 1)
            end
        end
        local h = table.concat(hex)
        return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-" .. h:sub(17, 20) .. "-" .. h:sub(21, 32)
    end
`;

/** The first load of a fresh zone (readdir through LuaJIT's FFI: glibc's 64-bit struct dirent). */
const LUA_INITIAL_LOAD = `
    -- Every route file into the table (a fresh zone only).
    local function load_all()
        local ffi = require("ffi")
        pcall(ffi.cdef, [[
            typedef struct demiurge_dir demiurge_dir;
            struct demiurge_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen; unsigned char d_type; char d_name[256]; };
            demiurge_dir *opendir(const char *name);
            struct demiurge_dirent *readdir(demiurge_dir *dir);
            int closedir(demiurge_dir *dir);
        ]])
        local n, dir = 0, ffi.C.opendir(ROUTES)
        if dir ~= nil then
            while true do
                local e = ffi.C.readdir(dir)
                if e == nil then
                    break
                end
                local id = ffi.string(e.d_name):match("^org%-(${LUA_UUID})%.conf$")
                local target = id and read_route(id)
                if target then
                    local ok, err = routes:safe_set(id, target)
                    if ok then
                        n = n + 1
                    else
                        ngx.log(ngx.ERR, "demiurge: route table ${ROUTES_DICT} (${ROUTES_DICT_SIZE}) cannot hold ", id, ": ", err)
                    end
                end
            end
            ffi.C.closedir(dir)
        end
        routes:set(LOADED, true)
        ngx.log(ngx.NOTICE, "demiurge: ", n, " routes loaded from ", ROUTES)
    end

    -- A fresh nginx (a new, empty zone): ONE worker loads every route file, in init_worker, i.e. after
    -- the master has bound its sockets, and before that worker accepts; every load waits for it (below).
    -- So a writer whose status request is refused (nothing bound yet, or nginx stopped) knows that any
    -- initial load reads the files after its change: a refused removal is a removal nginx will honour.
    -- (Loading in the master, before it binds, would read a file a writer could remove before nginx
    -- answers, and bring its route back.) A HUP reload keeps the zone and its LOADED mark and never
    -- reads the files again (the same race); nginx -t reads nothing. While the first load runs, the other
    -- worker may already answer requests: for those few milliseconds a miss is the no-gateway page.
    function demiurge.start_worker()
        if routes:get(LOADED) or not routes:add(LOADING, ngx.worker.pid(), 60) then
            return
        end
        load_all()
    end

    -- Loads wait for the initial load; should its worker have died in it (LOADING expires), a load does it.
    local function wait_loaded()
        local waited = 0
        while not routes:get(LOADED) do
            if routes:add(LOADING, ngx.worker.pid(), 60) then
                load_all()
                return true
            end
            if waited > 5 then
                return false
            end
            ngx.sleep(0.001)
            waited = waited + 0.001
        end
        return true
    end
`;

/** nginx (http context): the table's zone and the init block that defines the `demiurge` handlers. */
export function renderRouteTable(o: RouteTableOptions): string {
  const certs = o.certDir ? `${luaString(`${o.certDir}/`)}, ${luaString(o.certPath)}, ${luaString(o.keyPath)}` : 'nil, nil, nil';
  return `# The live route table: org id -> host:port of its gateway, in shared memory (every worker,
# every worker generation across a HUP reload). Its size is fixed on purpose: a zone whose size
# changes is a new, empty zone at that reload.
lua_shared_dict ${ROUTES_DICT} ${ROUTES_DICT_SIZE};

init_by_lua_block {
    -- demiurge-allocator: written by the gateway allocator; do not edit by hand (runtime/nginx-route-table.ts).
    local routes = ngx.shared.${ROUTES_DICT}
    local ROUTES = ${luaString(`${o.routesDir}/`)}
    local VERSION = ${luaString(o.version)}
    local CERTS, BASE_CERT, BASE_KEY = ${certs}
    local ID = "^${LUA_UUID}$"
    local FLAT = ${o.flat ? 'true' : 'false'}
    local DOMAIN = ${luaString(o.domain)}
    local LOCK, LOADED, LOADING = "~load-lock", "~loaded", "~loading"
    demiurge = {}
${LUA_HELPERS}${LUA_INITIAL_LOAD}${LUA_HANDLERS}${o.flat ? LUA_COMPACT_DECODER : ''}}

init_worker_by_lua_block {
    demiurge.start_worker()
}
`;
}

/** The org location's per-request lookup: one shared-dict get ("" when there is no route or no org id). */
export function routeLookupDirective(): string {
  return 'set_by_lua_block $demiurge_gateway { return demiurge.route() }';
}
