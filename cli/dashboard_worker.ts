/**
 * The worker that `startDashboardThread` (dashboard_server.ts) starts: `{ start: DashboardOptions }` answers
 * `{ url }` or `{ error }`; `{ close: true }` closes the server and answers `{ closed: true }`.
 * @module
 */
/// <reference lib="deno.worker" />
import { type Dashboard, type DashboardOptions, startDashboard } from "./dashboard_server.ts";

let dashboard: Dashboard | null = null;

self.onmessage = async (e: MessageEvent<{ start?: DashboardOptions; close?: boolean }>) => {
  if (e.data.start) {
    try {
      dashboard = await startDashboard(e.data.start);
      self.postMessage({ url: dashboard.url });
    } catch (err) {
      self.postMessage({ error: (err as Error).message });
    }
  } else if (e.data.close) {
    await dashboard?.close();
    self.postMessage({ closed: true });
  }
};
