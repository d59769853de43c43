// Sends COUNT log records to URL with the OpenTelemetry JS SDK's OTLP/HTTP (JSON) logs exporter.
// Usage: node export_logs.mjs URL SERVICE COUNT
import { SeverityNumber } from "@opentelemetry/api-logs";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchLogRecordProcessor, LoggerProvider } from "@opentelemetry/sdk-logs";

const [url, service, count] = process.argv.slice(2);
const exporter = new OTLPLogExporter({ url });
const provider = new LoggerProvider({
  resource: resourceFromAttributes({ "service.name": service }),
  processors: [new BatchLogRecordProcessor({ exporter, maxExportBatchSize: 200, maxQueueSize: 2000 })],
});
const logger = provider.getLogger("js-test", "1.0.0");
const levels = [
  [SeverityNumber.DEBUG, "DEBUG"],
  [SeverityNumber.INFO, "INFO"],
  [SeverityNumber.WARN, "WARN"],
  [SeverityNumber.ERROR, "ERROR"],
  [SeverityNumber.FATAL, "FATAL"],
];
for (let i = 0; i < Number(count); i++) {
  const [severityNumber, severityText] = levels[i % levels.length];
  logger.emit({
    severityNumber,
    severityText,
    body: `js ${i}`,
    attributes: { i, user: `u${i % 7}`, ok: i % 2 === 0, ratio: i / 4, http: { status: 200 } },
  });
}
await provider.shutdown();
