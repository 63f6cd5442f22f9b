// JSONL lines through nlohmann-json (see jsonl.h).
#include "samout/data/jsonl.h"

#include <nlohmann/json.hpp>

namespace samout::data {

std::string json_string_field(std::string_view line, const std::string& field) {
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    // what(): "[json.exception.parse_error.101] parse error at line 1, column 24: <reason>; last
    // read: '<the line so far>'": keep the reason and the column, not the echo of the line.
    std::string reason = e.what();
    const size_t start = reason.find(": ");
    reason = start == std::string::npos ? reason : reason.substr(start + 2);
    reason = reason.substr(0, reason.find("; last read"));
    throw JsonError(reason + " at column " + std::to_string(e.byte));
  }
  const auto it = object.is_object() ? object.find(field) : object.end();
  if (it == object.end() || !it->is_string()) throw JsonError("no string field '" + field + "'");
  return it->get<std::string>();
}

}  // namespace samout::data
