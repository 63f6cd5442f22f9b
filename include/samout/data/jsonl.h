// One string field out of each line of a JSONL file, parsed by nlohmann-json.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace samout::data {

// Thrown with a short reason (nlohmann's, with the column; or "no string field 'text'").
class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses `line` as one JSON object and returns the decoded value of its top-level string member
// `field` (escapes, including \u surrogate pairs, decoded to UTF-8). Validates the whole line,
// UTF-8 included.
std::string json_string_field(std::string_view line, const std::string& field);

}  // namespace samout::data
