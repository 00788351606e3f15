// A small strict JSON reader for tokenizer.json documents.
//
// Parse() checks the whole document's syntax once (RFC 8259: no trailing
// commas, no comments, strings of valid UTF-8 with valid escapes, nesting at
// most kMaxDepth deep); a JsonView then reads one value lazily, straight from
// the text, so a 12 MB vocabulary is never copied into a tree. Every error is
// a FormatError that names where the problem is, as a path such as
// "tokenizer.json: model.merges[12]".
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace awqcore::json {

constexpr int kMaxDepth = 256;

class JsonView {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // The root: `name` is its path.
  JsonView(std::string_view text, std::string name) : text_(text), suffix_(std::move(name)) {}
  // A member or element of the value whose path is *parent.
  JsonView(std::string_view text, std::shared_ptr<const std::string> parent, std::string suffix)
      : text_(text), parent_(std::move(parent)), suffix_(std::move(suffix)) {}

  Type type() const;
  std::string path() const { return parent_ ? *parent_ + suffix_ : suffix_; }
  bool is_null() const { return type() == Type::kNull; }

  // Each accessor throws FormatError naming path() when the type differs.
  std::string AsString() const;
  bool AsBool() const;
  double AsNumber() const;
  long long AsInt() const;  // a number that must be a whole number

  // Object members in document order; `visit` gets the decoded key.
  void ForEachMember(const std::function<void(const std::string&, const JsonView&)>& visit) const;
  // Array elements in order.
  void ForEachElement(const std::function<void(size_t, const JsonView&)>& visit) const;
  size_t ArraySize() const;
  // A two-string array ["left", "right"] (a merge), read without visiting it.
  std::pair<std::string, std::string> AsStringPair() const;
  // The member `key` of an object, if present (and not null when skip_null).
  std::optional<JsonView> Find(std::string_view key, bool skip_null = true) const;
  JsonView Get(std::string_view key) const;  // FormatError when missing or null
  std::vector<std::pair<std::string, JsonView>> Members() const;

  // FormatError "<path>: <what>".
  [[noreturn]] void Fail(const std::string& what) const;

 private:
  std::string_view text_;  // exactly this value's text, no surrounding space
  // The path, built only for errors: the container's (shared by its children)
  // and this value's own part, "[index]" or ".key".
  std::shared_ptr<const std::string> parent_;
  std::string suffix_;
};

// The root of `text`, after a full syntax check; `name` starts every path.
JsonView Parse(std::string_view text, const std::string& name);

}  // namespace awqcore::json
