"""What the cross-service tests and the benchmarks share that needs the services or the tools
(the testing lib, `cliprs_testing`, depends on neither): the platform as processes
(`tests.support.platform`) and the search-api in-process over seeded areas
(`tests.support.search_app`)."""
