//! Limits on the shape of a GraphQL document, checked on the parsed document before anything runs.
//!
//! Why: a single document can otherwise carry 1,000 aliases of `login` (1,000 password guesses in one
//! request, invisible to per-request rate limits), nest fragments to blow up execution, or stack
//! directives to burn CPU in validation. The ceilings are graphql-armor's defaults (depth 6, 15 aliases,
//! 50 directives), and at most one authentication mutation per document, however it is reached
//! (aliases, fragments, inline fragments). A refused document runs no resolver and touches no counter.

use async_graphql::parser::types::{
    ExecutableDocument, FragmentDefinition, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned};

/// Mutations that check or spend a secret, or cost money (SMS): one per document.
pub const AUTH_MUTATIONS: [&str; 9] = [
    "generateCode",
    "verifyUser",
    "register",
    "login",
    "refreshToken",
    // Each checks a password or a code, or sends one.
    "changePassword",
    "resetPassword",
    "requestPhoneChange",
    "confirmPhoneChange",
];

/// The standard introspection query (GraphiQL's) nests 13 fields deep through `ofType`; introspection
/// is exempt from `max_depth` (as in graphql-armor) but capped here so that it cannot be nested into an
/// exponential response.
const MAX_INTROSPECTION_DEPTH: usize = 16;
/// Selections visited at most while checking, whatever the fragments expand to (fragment bombs).
const MAX_VISITS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct DocumentLimits {
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_directives: usize,
    /// Fields selected, counting every expansion of every fragment (introspection excluded).
    pub max_complexity: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Which limit: depth, aliases, directives, complexity, authMutations, fragmentCycle.
    pub limit: &'static str,
    pub max: usize,
    pub message: String,
}

#[derive(Default)]
struct Stats {
    depth: usize,
    introspection_depth: usize,
    aliases: usize,
    directives: usize,
    fields: usize,
    auth_mutations: usize,
    visits: usize,
}

struct Walker<'a> {
    doc: &'a ExecutableDocument,
    limits: &'a DocumentLimits,
    stats: Stats,
}

fn refusal(limit: &'static str, max: usize, message: String) -> Refusal {
    Refusal { limit, max, message }
}

impl Walker<'_> {
    fn check(&self) -> Result<(), Refusal> {
        let s = &self.stats;
        let l = self.limits;
        if s.visits > MAX_VISITS || s.fields > l.max_complexity {
            return Err(refusal(
                "complexity",
                l.max_complexity,
                format!(
                    "The query selects too many fields (at most {}).",
                    l.max_complexity
                ),
            ));
        }
        if s.depth > l.max_depth {
            return Err(refusal(
                "depth",
                l.max_depth,
                format!("The query is too deep (at most {}).", l.max_depth),
            ));
        }
        if s.introspection_depth > MAX_INTROSPECTION_DEPTH {
            return Err(refusal(
                "depth",
                MAX_INTROSPECTION_DEPTH,
                format!("The introspection query is too deep (at most {MAX_INTROSPECTION_DEPTH})."),
            ));
        }
        if s.aliases > l.max_aliases {
            return Err(refusal(
                "aliases",
                l.max_aliases,
                format!("Too many aliases (at most {}).", l.max_aliases),
            ));
        }
        if s.directives > l.max_directives {
            return Err(refusal(
                "directives",
                l.max_directives,
                format!("Too many directives (at most {}).", l.max_directives),
            ));
        }
        if s.auth_mutations > 1 {
            return Err(refusal(
                "authMutations",
                1,
                format!("At most one of {} per request.", AUTH_MUTATIONS.join(", ")),
            ));
        }
        Ok(())
    }

    /// `depth`: fields above this selection set; `intro`: inside `__schema`/`__type`; `root_mutation`:
    /// this set is the root of a mutation (directly or through fragments).
    fn walk(
        &mut self,
        set: &Positioned<SelectionSet>,
        depth: usize,
        intro: Option<usize>,
        root_mutation: bool,
        fragments: &mut Vec<Name>,
    ) -> Result<(), Refusal> {
        for selection in &set.node.items {
            self.stats.visits += 1;
            match &selection.node {
                Selection::Field(field) => {
                    let f = &field.node;
                    self.stats.directives += f.directives.len();
                    if f.alias.is_some() {
                        self.stats.aliases += 1;
                    }
                    let name = f.name.node.as_str();
                    if root_mutation && AUTH_MUTATIONS.contains(&name) {
                        self.stats.auth_mutations += 1;
                    }
                    let intro = match intro {
                        Some(d) => Some(d + 1),
                        None if name == "__schema" || name == "__type" => Some(1),
                        None => None,
                    };
                    let depth = match intro {
                        Some(d) => {
                            self.stats.introspection_depth = self.stats.introspection_depth.max(d);
                            depth
                        }
                        None => {
                            if name != "__typename" {
                                self.stats.fields += 1;
                            }
                            self.stats.depth = self.stats.depth.max(depth + 1);
                            depth + 1
                        }
                    };
                    self.check()?;
                    self.walk(&f.selection_set, depth, intro, false, fragments)?;
                }
                Selection::FragmentSpread(spread) => {
                    self.stats.directives += spread.node.directives.len();
                    let name = &spread.node.fragment_name.node;
                    if fragments.contains(name) {
                        return Err(refusal(
                            "fragmentCycle",
                            0,
                            format!("Fragment {name} spreads itself."),
                        ));
                    }
                    // An unknown fragment is left to validation, which reports it properly.
                    if let Some(fragment) = self.doc.fragments.get(name) {
                        let fragment: &Positioned<FragmentDefinition> = fragment;
                        fragments.push(name.clone());
                        self.walk(
                            &fragment.node.selection_set,
                            depth,
                            intro,
                            root_mutation,
                            fragments,
                        )?;
                        fragments.pop();
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.stats.directives += inline.node.directives.len();
                    self.check()?;
                    self.walk(&inline.node.selection_set, depth, intro, root_mutation, fragments)?;
                }
            }
        }
        Ok(())
    }
}

/// Checks every operation of the document (whichever one runs, none may exceed a limit).
pub fn check_document(doc: &ExecutableDocument, limits: &DocumentLimits) -> Result<(), Refusal> {
    let mut walker = Walker {
        doc,
        limits,
        stats: Stats::default(),
    };
    // Directives on fragment definitions and operations count too.
    walker.stats.directives += doc
        .fragments
        .values()
        .map(|f| f.node.directives.len())
        .sum::<usize>();
    for (_, operation) in doc.operations.iter() {
        let op = &operation.node;
        walker.stats.directives += op.directives.len();
        walker.stats.directives += op
            .variable_definitions
            .iter()
            .map(|v| v.node.directives.len())
            .sum::<usize>();
        let root_mutation = op.ty == OperationType::Mutation;
        walker.walk(&op.selection_set, 0, None, root_mutation, &mut Vec::new())?;
        walker.check()?;
    }
    walker.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DocumentLimits {
        DocumentLimits {
            max_depth: 6,
            max_aliases: 15,
            max_directives: 50,
            max_complexity: 100,
        }
    }

    fn check(q: &str) -> Result<(), Refusal> {
        let doc = async_graphql::parser::parse_query(q).unwrap();
        check_document(&doc, &limits())
    }

    fn limit(q: &str) -> &'static str {
        check(q).unwrap_err().limit
    }

    #[test]
    fn ordinary_operations_pass() {
        check("mutation { verifyUser(phone: \"+1\", code: \"1\") { auth { user { id phone } } } }").unwrap();
        check("{ me { id phone firstName lastName createdAt } }").unwrap();
        check("query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id } } }").unwrap();
    }

    #[test]
    fn one_auth_mutation_per_document_however_reached() {
        assert_eq!(
            limit(
                "mutation { a: login(phone: \"\", password: \"\") { accessToken } b: login(phone: \"\", password: \"\") { accessToken } }"
            ),
            "authMutations"
        );
        assert_eq!(
            limit(
                "mutation { login(phone: \"\", password: \"\") { accessToken } verifyUser(phone: \"\", code: \"\") { phone } }"
            ),
            "authMutations"
        );
        assert_eq!(
            limit("mutation { ...F ...F } fragment F on Mutation { generateCode(phone: \"\") { phone } }"),
            "authMutations"
        );
        assert_eq!(
            limit(
                "mutation { ... on Mutation { generateCode(phone: \"\") { phone } } generateCode(phone: \"\") { phone } }"
            ),
            "authMutations"
        );
        // The account mutations that check a password or a code, or send one, count too.
        assert_eq!(
            limit(
                "mutation { a: changePassword(currentPassword: \"\", newPassword: \"\") { revokedSessions } b: changePassword(currentPassword: \"\", newPassword: \"\") { revokedSessions } }"
            ),
            "authMutations"
        );
        assert_eq!(
            limit(
                "mutation { confirmPhoneChange(newPhone: \"\", code: \"\") { id } resetPassword(phone: \"\", code: \"\", newPassword: \"\") { accessToken } }"
            ),
            "authMutations"
        );
        // logout is not an authentication attempt; one auth mutation with it is fine.
        check("mutation { logout { revokedSessions } login(phone: \"\", password: \"\") { accessToken } }")
            .unwrap();
    }

    #[test]
    fn depth_aliases_directives_complexity() {
        assert_eq!(limit("{ a { b { c { d { e { f { g } } } } } } }"), "depth");
        check("{ a { b { c { d { e { f } } } } } }").unwrap();
        let aliases: String = (0..16).map(|i| format!("a{i}: me {{ id }} ")).collect();
        assert_eq!(limit(&format!("{{ {aliases} }}")), "aliases");
        let directives: String = (0..51).map(|_| "@skip(if: false) ").collect();
        assert_eq!(limit(&format!("{{ me {directives} {{ id }} }}")), "directives");
        let fields: String = (0..101).map(|i| format!("f{i} ")).collect();
        assert_eq!(limit(&format!("{{ {fields} }}")), "complexity");
    }

    #[test]
    fn fragment_bombs_and_cycles() {
        let mut q = String::from("{ ...F0 }");
        for i in 0..10 {
            q.push_str(&format!(
                " fragment F{i} on Query {{ {} }}",
                format!("...F{} ", i + 1).repeat(10)
            ));
        }
        q.push_str(" fragment F10 on Query { me { id } }");
        assert_eq!(limit(&q), "complexity");
        assert_eq!(
            limit("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
            "fragmentCycle"
        );
    }

    #[test]
    fn introspection_is_exempt_from_depth_but_capped() {
        check(
            "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }",
        )
        .unwrap();
        let deep = format!(
            "{{ __schema {{ types {{ {} name {} }} }} }}",
            "fields { type { ".repeat(10),
            "} } ".repeat(10)
        );
        assert_eq!(limit(&deep), "depth");
    }
}
