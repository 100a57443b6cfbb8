// How a failed call is shown: its gRPC status, then the google.rpc details the mesh sends in
// grpc-status-details-bin (ErrorInfo: why; BadRequest: which field). Connect decodes them
// with the schemas generated from googleapis' error_details.proto (gen/ts/google/rpc).
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/ts/google/rpc/error_details_pb.js";

/** The lines that explain a failed call of `step`, e.g. "CreateUser". */
export function describeFailure(step: string, cause: unknown): string[] {
  if (!(cause instanceof ConnectError)) return [`${step} failed: ${String(cause)}`];
  const error = cause;
  const lines = [`${step} failed: ${statusName(error.code)}: ${error.rawMessage}`];
  for (const info of error.findDetails(ErrorInfoSchema)) {
    const metadata = Object.entries(info.metadata).map(([key, value]) => `${key}=${value}`);
    lines.push([`  reason ${info.reason} (${info.domain})`, ...metadata].join(" "));
  }
  for (const badRequest of error.findDetails(BadRequestSchema)) {
    for (const violation of badRequest.fieldViolations) {
      lines.push(`  field ${violation.field}: ${violation.description}`);
    }
  }
  return lines;
}

/** The gRPC name of `code` ("INVALID_ARGUMENT"), as grpcurl and the contracts write it. */
function statusName(code: Code): string {
  return Code[code].replace(/(?<!^)([A-Z])/g, "_$1").toUpperCase();
}
