/**
 * The gateway inventory: the hand-off between the Pulumi program (stack output
 * `gatewayInventory`) and the runtime allocator (`registerGateways`).
 * Both halves import this type, so the shapes cannot drift.
 */
export interface GatewaySpec {
  /** Container name, `gw-pool-<env>-<n>`. */
  name: string;
  /** Address at which the stage-1 nginx reaches the gateway's published HTTP port (IPv4 or DNS name). */
  host: string;
  /** Published stage-2 nginx port (httpPortBase + n). */
  httpPort: number;
  /** Published OpenVPN UDP port (vpnPortBase + n). */
  vpnPort: number;
}
